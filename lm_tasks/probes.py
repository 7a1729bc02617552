"""Quick probes of what a pretrained checkpoint's hidden states already know, without fine-tuning.

`sentiment_probe`: a linear probe on the embedded sentiment set (lm_tasks.tasks.embedded):
each review's final hidden states, mean-pooled, standardised, then a ridge-regression
classifier fitted in closed form on 600 reviews and scored on 300 others. Seconds on a CPU,
deterministic, and it tracks how usable the representation is for a classification head,
which held-out loss does not say directly. Chance is 0.5 (the classes are balanced).
"""

from __future__ import annotations

from pathlib import Path

import torch

PROBES = ("none", "sentiment")
RIDGE = 1.0  # the ridge penalty: features are standardised, so one value fits every model size


def sentiment_probe(model, tokenizer_path: str | Path, seed: int = 0) -> float | None:
    """Validation accuracy of the linear probe; None for a model without hidden states (n-gram)."""
    from lm_tasks.tasks.embedded import sentiment
    from lm_tasks.tokenizer import load_tokenizer

    if not hasattr(model, "hidden_states"):
        return None
    data = sentiment(n_train=600, n_validation=300, seed=seed)
    tokenizer = load_tokenizer(tokenizer_path)
    train = _features(model, tokenizer, data["train"]["text"])
    valid = _features(model, tokenizer, data["validation"]["text"])
    mean, std = train.mean(0), train.std(0) + 1e-6
    weights = _ridge((train - mean) / std, torch.tensor(data["train"]["label"]))
    predicted = (_with_bias((valid - mean) / std) @ weights > 0).long()
    return (predicted == torch.tensor(data["validation"]["label"])).float().mean().item()


@torch.no_grad()
def _features(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """Mean-pooled final hidden states, one row per text (truncated to the model's context)."""
    model.eval()
    rows = []
    for encoding in tokenizer.encode_batch(texts, add_special_tokens=False):
        ids = encoding.ids[:model.config.block_size] or [model.config.eos_id or 0]
        rows.append(model.hidden_states(torch.tensor([ids], device=model.device))[0].mean(0).float().cpu())
    return torch.stack(rows).double()


def _with_bias(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)


def _ridge(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Weights w minimising |Xw - y|^2 + RIDGE |w|^2 for targets y = -1 / +1."""
    x, y = _with_bias(x), labels.double() * 2 - 1
    return torch.linalg.solve(x.T @ x + RIDGE * torch.eye(x.shape[1], dtype=x.dtype), x.T @ y)
