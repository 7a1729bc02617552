"""The one optimizer and learning-rate schedule, shared by every training recipe.

    optim.name=adamw      AdamW on every parameter (the textbook recipe)
    optim.name=muon       Muon (momentum, then the update orthogonalised by Newton-Schulz
                          iterations) on the hidden matrices, AdamW on the rest (embeddings,
                          the tied output head, norm gains, biases); torch's own
                          `torch.optim.Muon` with Moonshot's update scaling, so the AdamW
                          learning rate and weight decay carry over
    optim.schedule=cosine linear warmup, cosine decay to min_lr at the last step
    optim.schedule=wsd    linear warmup, constant, then linear decay to min_lr over the last
                          `decay_fraction` of the steps (warmup-stable-decay)

With a wall-clock budget (trainer.max_minutes, finetune.<task>.max_minutes) the schedule runs
on whichever is further along, the steps or the budget: on a machine slower than the step
count assumed, the decay still ends when the time does, instead of being cut off half-way.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from lightning.pytorch.callbacks import Timer

from lm_tasks.config import OptimConfig


def lr_at(step: int, cfg: OptimConfig, total_steps: int, budget_used: float = 0.0) -> float:
    """The learning rate of optimizer step `step` out of `total_steps`, when `budget_used` (0 to
    1) of the wall-clock budget is spent: past warmup, the schedule is at whichever is further."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    step = max(step, int(budget_used * total_steps))
    if step >= total_steps:
        return cfg.min_lr
    if cfg.schedule == "wsd":
        decay_steps = max(1, round(cfg.decay_fraction * (total_steps - cfg.warmup_steps)))
        remaining = total_steps - step
        if remaining >= decay_steps:
            return cfg.lr
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * remaining / decay_steps
    progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def build_optimizer(param_groups: list[dict], cfg: OptimConfig, total_steps: int, on_cuda: bool = False,
                    hidden_matrices: list[torch.Tensor] | None = None,
                    budget_used: Callable[[], float] = lambda: 0.0):
    """The configured optimizer over the given (decay / no-decay) groups, with the schedule.

    `hidden_matrices` are the parameters Muon may take (optim.name=muon); every other
    parameter stays with AdamW. `budget_used()` is the share of the wall-clock budget spent
    (`time_budget_used`). Returns (optimizer, scheduler); step the scheduler once per
    optimizer step.
    """
    fused = on_cuda if cfg.fused is None else cfg.fused
    for group in param_groups:  # layer-wise learning-rate decay (CausalLM.optimizer_groups)
        group["lr"] = cfg.lr * group.pop("lr_scale", 1.0)
    adamw = dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused)
    if cfg.name == "muon":
        optimizer = MuonWithAdamW(param_groups, hidden_matrices or [], cfg, adamw)
    else:
        optimizer = torch.optim.AdamW(param_groups, **adamw)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_at(step, cfg, total_steps, budget_used()) / cfg.lr
    )
    return optimizer, scheduler


def time_budget_used(trainer) -> float:
    """The share (0 to 1) of the trainer's max_time spent training, 0 without one. Lightning's
    Timer keeps its elapsed time in checkpoints, so a resumed run continues where it was."""
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    remaining = timer.time_remaining() if timer is not None else None
    if remaining is None:
        return 0.0
    elapsed = timer.time_elapsed()
    return min(1.0, elapsed / max(elapsed + remaining, 1e-9))


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon on the hidden matrices and AdamW on everything else, stepped as one optimizer.

    The two inner optimizers work on this optimizer's own parameter groups and state, so
    one scheduler sets both learning rates and one state dict checkpoints (and restores) both.
    """

    def __init__(self, param_groups: list[dict], hidden_matrices: list[torch.Tensor], cfg: OptimConfig,
                 adamw: dict):
        hidden = {id(p) for p in hidden_matrices}
        muon_groups, adamw_groups = [], []
        for group in param_groups:
            params = list(group["params"])
            rest = {key: value for key, value in group.items() if key != "params"}
            matrices = [p for p in params if id(p) in hidden and p.dim() == 2]
            others = [p for p in params if not (id(p) in hidden and p.dim() == 2)]
            if matrices:
                muon_groups.append({**rest, "params": matrices})
            if others:
                adamw_groups.append({**rest, "params": others})
        if not muon_groups:
            raise ValueError("optim.name=muon: this model has no hidden matrices for Muon; use optim.name=adamw")
        self.muon = torch.optim.Muon(muon_groups, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                     momentum=cfg.muon_momentum, adjust_lr_fn="match_rms_adamw")
        self.adamw = torch.optim.AdamW(adamw_groups or [{"params": []}], **adamw)
        self._muon_groups = len(self.muon.param_groups)
        super().__init__(self.muon.param_groups + self.adamw.param_groups, defaults={})
        self._share()

    def _share(self) -> None:
        """Point the inner optimizers at this optimizer's groups (the scheduler's lr) and state."""
        self.muon.param_groups = self.param_groups[:self._muon_groups]
        self.adamw.param_groups = self.param_groups[self._muon_groups:]
        self.muon.state = self.adamw.state = self.state

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)  # replaces the group dicts and the state: share them again
        self._share()
