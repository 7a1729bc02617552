"""Text classification on the pretrained Transformer.

Pooling (`pooling` in the task config): `last` reads the hidden state of the last
real token, which in a causal model is the only position that has seen the whole
text; `mean` averages the hidden states of all real tokens. A linear head maps the
pooled state to one logit per label. Texts longer than `max_length` tokens keep
their first `max_length` tokens (the count of truncated rows is reported).
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn as nn
import torch.nn.functional as F
from datasets import Dataset
from tokenizers import Tokenizer

from lm_tasks.metrics import load_metric
from lm_tasks.models.base import CausalLM
from lm_tasks.tasks.batching import pad


class ClassificationHead(nn.Module):
    def __init__(self, n_embd: int, n_labels: int, pooling: str, dropout: float):
        super().__init__()
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(n_embd, n_labels)

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """hidden (B, T, C), lengths (B,) real tokens per row -> logits (B, n_labels)."""
        if self.pooling == "last":
            pooled = hidden[torch.arange(hidden.size(0), device=hidden.device), lengths - 1]  # (B, C)
        else:
            mask = (torch.arange(hidden.size(1), device=hidden.device)[None, :] < lengths[:, None]).float()
            pooled = (hidden * mask.unsqueeze(-1)).sum(1) / lengths.unsqueeze(1).float()
        return self.out(self.dropout(pooled))


class ClassificationAdapter:
    """What fine-tuning needs to know about classification: encode, batch, loss, predict, score."""

    task = "classification"

    def __init__(self, label_names: list[str], pooling: str, max_length: int, pad_id: int):
        self.label_names, self.pooling, self.max_length, self.pad_id = label_names, pooling, max_length, pad_id

    def build_head(self, model: CausalLM) -> nn.Module:
        # The head drops out at the backbone's rate (model.dropout of the pretrained model).
        return ClassificationHead(model.hidden_size, len(self.label_names), self.pooling, model.config.dropout)

    def encode(self, ds: Dataset, tokenizer: Tokenizer) -> tuple[Dataset, int]:
        """Token ids per row (truncated to max_length); returns the rows and how many were truncated."""
        encodings = tokenizer.encode_batch(list(ds["text"]), add_special_tokens=False)
        ids = [e.ids[: self.max_length] or [self.pad_id] for e in encodings]
        truncated = sum(len(e.ids) > self.max_length for e in encodings)
        return Dataset.from_dict({"input_ids": ids, "label": list(ds["label"])}), truncated

    def collate(self, rows: list[dict]) -> dict:
        lengths = torch.tensor([len(r["input_ids"]) for r in rows])
        idx = pad([r["input_ids"] for r in rows], self.pad_id)
        return {"idx": idx, "lengths": lengths, "labels": torch.tensor([r["label"] for r in rows])}

    def logits(self, model: CausalLM, head: nn.Module, batch: dict) -> torch.Tensor:
        return head(model.hidden_states(batch["idx"]), batch["lengths"])

    def loss(self, model: CausalLM, head: nn.Module, batch: dict) -> torch.Tensor:
        return F.cross_entropy(self.logits(model, head, batch), batch["labels"])

    def predict(self, model: CausalLM, head: nn.Module, batch: dict) -> list[dict]:
        probs = F.softmax(self.logits(model, head, batch).float(), dim=-1)
        scores, ids = probs.max(dim=-1)
        return [{"label": self.label_names[i], "label_id": i, "score": s}
                for i, s in zip(ids.tolist(), scores.tolist())]

    def references(self, batch: dict) -> list[int]:
        return batch["labels"].tolist()

    def score(self, predictions: list[dict], references: list[int]) -> dict:
        return load_metric("classification").compute(
            predictions=[p["label_id"] for p in predictions], references=references)

    def baseline(self, train: Dataset, validation: Dataset) -> dict:
        """The trivial baseline: always predict the most frequent training label."""
        majority = Counter(train["label"]).most_common(1)[0][0]
        references = list(validation["label"])
        return self.score([{"label_id": majority}] * len(references), references)

    def finalize(self, predictions: list, references: list) -> tuple[list, list]:
        return predictions, references  # one prediction per example already

    def describe(self) -> dict:
        return {"task": self.task, "label_names": self.label_names, "pooling": self.pooling,
                "max_length": self.max_length}

    def record(self, row: dict, prediction: dict, reference: int) -> dict:
        return {"text": row["text"], "prediction": prediction, "reference": self.label_names[reference]}
