"""Evaluate a pretrained language model on the held-out split.

Loss, perplexity and bits per byte over every validation block (bits per byte
uses the split's own byte count, so it compares across tokenizers), the loss of
a unigram model fitted on the training tokens as the baseline to beat, and
sample generations from fixed prompts.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from lm_tasks.config import EvalConfig
from lm_tasks.data.packing import PackedBlocks, read_meta
from lm_tasks.models.base import CausalLM
from lm_tasks.tokenizer import load_tokenizer


@torch.no_grad()
def heldout_loss(model: CausalLM, tokens_dir: str | Path, batch_size: int, max_batches: int | None = None) -> float:
    """Mean next-token cross-entropy (nats) over the validation blocks.

    Per-token losses are summed in float64 and the tokens counted, the last batch partial or
    not, so the mean is the same at every batch size (to float32 rounding of the logits)."""
    meta = read_meta(tokens_dir)
    blocks = PackedBlocks(Path(tokens_dir) / "validation.bin", model.config.block_size, meta["dtype"])
    loader = DataLoader(blocks, batch_size=batch_size, shuffle=False)
    total = max_batches if max_batches is not None else len(loader)
    device = model.device
    model.eval()
    loss_sum, count = 0.0, 0
    for i, (x, y) in enumerate(tqdm(loader, total=min(total, len(loader)), desc="evaluate", leave=False)):
        if max_batches is not None and i >= max_batches:
            break
        loss_sum += model.token_losses(x.to(device), y.to(device)).double().sum().item()
        count += int((y != -100).sum())
    return loss_sum / count


def unigram_loss(tokens_dir: str | Path, vocab_size: int) -> float:
    """Cross-entropy (nats/token) of validation tokens under add-one unigram counts of train."""
    meta = read_meta(tokens_dir)
    train = np.memmap(Path(tokens_dir) / "train.bin", dtype=meta["dtype"], mode="r")
    val = np.memmap(Path(tokens_dir) / "validation.bin", dtype=meta["dtype"], mode="r")
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64) + 1.0
    log_probs = np.log(counts / counts.sum())
    return float(-log_probs[val].mean())


def lm_metrics(loss: float, tokens_dir: str | Path) -> dict:
    split = read_meta(tokens_dir)["splits"]["validation"]
    return {
        "loss": loss,
        "perplexity": math.exp(loss),
        "bpb": loss / math.log(2) * split["tokens"] / split["bytes"],
    }


def sample_generations(model: CausalLM, tokenizer_path: str | Path, cfg: EvalConfig, seed: int) -> list[dict]:
    tokenizer = load_tokenizer(tokenizer_path)
    device = model.device
    generator = torch.Generator(device=device).manual_seed(seed)
    samples = []
    for prompt in cfg.prompts:
        ids = tokenizer.encode(prompt, add_special_tokens=False).ids or [model.config.eos_id]
        out = model.generate(torch.tensor([ids], device=device), cfg.max_new_tokens, cfg.temperature,
                             cfg.top_k, cfg.top_p, eos_id=model.config.eos_id, generator=generator)
        new_ids = [i for i in out[0, len(ids):].tolist() if i != model.config.eos_id]
        samples.append({"prompt": prompt, "completion": tokenizer.decode(new_ids)})
    return samples


def evaluate_lm(model: CausalLM, tokens_dir: str | Path, tokenizer_path: str | Path, cfg: EvalConfig,
                seed: int) -> tuple[dict, list[dict]]:
    """Metrics (with the unigram baseline) and sample generations."""
    metrics = lm_metrics(heldout_loss(model, tokens_dir, cfg.batch_size, cfg.max_batches), tokens_dir)
    baseline = lm_metrics(unigram_loss(tokens_dir, model.config.vocab_size), tokens_dir)
    metrics.update({f"unigram_{k}": v for k, v in baseline.items()})
    return metrics, sample_generations(model, tokenizer_path, cfg, seed)
