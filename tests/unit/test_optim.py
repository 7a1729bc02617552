"""The one learning-rate schedule and optimizer helper."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import Timer

from lm_tasks.config import ConfigError, OptimConfig
from lm_tasks.models.gpt import GPT, GPTConfig
from lm_tasks.training.optim import MuonWithAdamW, build_optimizer, lr_at, time_budget_used

CFG = OptimConfig(name="adamw", lr=1e-3, min_lr=1e-4, weight_decay=0.1, betas=[0.9, 0.95], eps=1e-8,
                  warmup_steps=10, fused=None)


def test_warmup_then_cosine_to_min_lr():
    assert lr_at(0, CFG, 100) == pytest.approx(1e-4)
    assert lr_at(9, CFG, 100) == pytest.approx(1e-3)
    assert lr_at(55, CFG, 100) == pytest.approx((1e-3 + 1e-4) / 2)  # halfway through the decay
    assert lr_at(100, CFG, 100) == pytest.approx(1e-4)
    assert lr_at(500, CFG, 100) == pytest.approx(1e-4)
    decay = [lr_at(s, CFG, 100) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))


def test_layer_wise_lr_decay_scales_each_layer_below_the_head():
    """finetune.<task>.layer_lr_decay: the head and final norm at lr, each layer below at decay times the one above."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=8, n_layer=2, n_head=2, n_embd=16))
    optimizer, scheduler = build_optimizer(model.optimizer_groups(0.1, layer_lr_decay=0.5), CFG, total_steps=30)
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    assert len(lr_of) == len(list(model.parameters()))  # every parameter once, the tied head included
    warm = lr_at(0, CFG, 30)  # the scheduler's first factor, the same for every group
    assert lr_of[id(model.ln_f.weight)] == pytest.approx((warm, 0.0))
    assert lr_of[id(model.blocks[1].attn.qkv.weight)] == pytest.approx((warm * 0.5, 0.1))
    assert lr_of[id(model.blocks[0].ln_1.weight)] == pytest.approx((warm * 0.25, 0.0))
    assert lr_of[id(model.wte.weight)] == pytest.approx((warm * 0.125, 0.1))
    for _ in range(15):
        optimizer.step()
        scheduler.step()
    assert sorted({round(g["lr"] / lr_at(15, CFG, 30), 9) for g in optimizer.param_groups}) == [0.125, 0.25, 0.5, 1]
    plain = model.optimizer_groups(0.1)  # without decay: the two groups of decaying and other weights
    assert [g["weight_decay"] for g in plain] == [0.1, 0.0] and "lr_scale" not in plain[0]


def test_scheduler_follows_lr_at():
    param = torch.nn.Parameter(torch.zeros(2, 2))
    optimizer, scheduler = build_optimizer([{"params": [param], "weight_decay": 0.1}], CFG, total_steps=30)
    seen = []
    for _ in range(30):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([lr_at(s, CFG, 30) for s in range(30)])
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.95)


def _cfg(**changes) -> OptimConfig:
    return OptimConfig(**{**CFG.__dict__, **changes})


def test_wsd_is_constant_then_decays_linearly_over_the_last_fraction():
    cfg = _cfg(schedule="wsd", decay_fraction=0.2)  # 90 steps after warmup: the last 18 decay
    assert lr_at(9, cfg, 100) == pytest.approx(1e-3)
    assert [lr_at(s, cfg, 100) for s in (10, 50, 82)] == pytest.approx([1e-3] * 3)
    assert lr_at(91, cfg, 100) == pytest.approx(1e-4 + 9e-4 * 9 / 18)
    assert lr_at(99, cfg, 100) == pytest.approx(1e-4 + 9e-4 / 18)
    assert lr_at(100, cfg, 100) == pytest.approx(1e-4)


def test_unknown_optimizer_or_schedule_names_the_choices():
    with pytest.raises(ConfigError, match="optim.name='muom'.*Did you mean 'muon'"):
        _cfg(name="muom")
    with pytest.raises(ConfigError, match="optim.schedule='wds'.*cosine, wsd"):
        _cfg(schedule="wds")


def _tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32))


def _train(model: GPT, optimizer, scheduler, steps: int, seed: int = 0) -> list[float]:
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        x = torch.randint(0, 64, (4, 16), generator=generator)
        _, loss = model(x, x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    return losses


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    model = _tiny_gpt()
    cfg = _cfg(name="muon", warmup_steps=2)
    optimizer, scheduler = build_optimizer(model.optimizer_groups(0.1), cfg, 20,
                                           hidden_matrices=model.hidden_matrices())
    assert isinstance(optimizer, MuonWithAdamW)
    muon = {id(p) for group in optimizer.muon.param_groups for p in group["params"]}
    names = {name for name, p in model.named_parameters() if id(p) in muon}
    assert names == {f"blocks.{i}.{part}.weight" for i in range(2)
                     for part in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")}
    assert id(model.wte.weight) not in muon  # the embedding, tied to the output head
    losses = _train(model, optimizer, scheduler, 20)
    assert losses[-1] < losses[0]
    state = optimizer.state
    assert "momentum_buffer" in state[model.blocks[0].attn.qkv.weight]
    assert "exp_avg" in state[model.wte.weight]
    # one scheduler drives both: every group carries the scheduled rate
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([lr_at(20, cfg, 20)] * 3)


def test_muon_state_dict_resumes_exactly():
    cfg = _cfg(name="muon", warmup_steps=2)
    straight = _tiny_gpt()
    opt, sched = build_optimizer(straight.optimizer_groups(0.1), cfg, 12, hidden_matrices=straight.hidden_matrices())
    expected = _train(straight, opt, sched, 6) + _train(straight, opt, sched, 6, seed=1)

    first = _tiny_gpt()
    opt, sched = build_optimizer(first.optimizer_groups(0.1), cfg, 12, hidden_matrices=first.hidden_matrices())
    head = _train(first, opt, sched, 6)
    saved = copy.deepcopy((first.state_dict(), opt.state_dict(), sched.state_dict()))

    resumed = _tiny_gpt(seed=5)
    resumed.load_state_dict(saved[0])
    opt, sched = build_optimizer(resumed.optimizer_groups(0.1), cfg, 12, hidden_matrices=resumed.hidden_matrices())
    opt.load_state_dict(saved[1])
    sched.load_state_dict(saved[2])
    tail = _train(resumed, opt, sched, 6, seed=1)
    assert head + tail == pytest.approx(expected, rel=1e-6)
    assert opt.muon.state is opt.state and opt.muon.param_groups[0] is opt.param_groups[0]


def test_a_spent_time_budget_moves_the_schedule_on():
    """On a slow machine the decay still ends with the budget, not at a step never reached."""
    cfg = _cfg(schedule="wsd", decay_fraction=0.2)
    assert lr_at(30, cfg, 100, budget_used=0.0) == pytest.approx(1e-3)  # stable phase by steps
    assert lr_at(30, cfg, 100, budget_used=0.91) == pytest.approx(lr_at(91, cfg, 100))
    assert lr_at(30, cfg, 100, budget_used=1.0) == pytest.approx(1e-4)
    assert lr_at(95, cfg, 100, budget_used=0.5) == pytest.approx(lr_at(95, cfg, 100))  # steps further along
    assert lr_at(3, cfg, 100, budget_used=0.95) == pytest.approx(4e-4)  # warmup is by steps
    assert lr_at(30, CFG, 100, budget_used=0.55) == pytest.approx((1e-3 + 1e-4) / 2)  # cosine too


def test_time_budget_used_reads_lightnings_timer(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("lightning.pytorch.callbacks.timer.time.monotonic", lambda: clock[0])
    timer = Timer(duration={"minutes": 2})
    trainer = SimpleNamespace(callbacks=[timer])
    assert time_budget_used(trainer) == 0.0  # not started
    timer.on_train_start(trainer, None)
    clock[0] += 30
    assert time_budget_used(trainer) == pytest.approx(0.25)
    timer.load_state_dict({"time_elapsed": {"train": 60.0}})  # a resumed run: the minute already spent
    assert time_budget_used(trainer) == pytest.approx(0.75)
    clock[0] += 300
    assert time_budget_used(trainer) == 1.0
    assert time_budget_used(SimpleNamespace(callbacks=[])) == 0.0
