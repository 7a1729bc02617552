"""The classification adapter: pooling, shapes, loss, baseline."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from lm_tasks.models.gpt import GPT, GPTConfig
from lm_tasks.tasks.classification import ClassificationAdapter, ClassificationHead


def test_last_pooling_reads_the_last_real_token():
    head = ClassificationHead(n_embd=4, n_labels=3, pooling="last", dropout=0.1).eval()
    hidden = torch.randn(2, 5, 4)
    lengths = torch.tensor([5, 2])
    expected = head.out(torch.stack([hidden[0, 4], hidden[1, 1]]))
    assert torch.allclose(head(hidden, lengths), expected)


def test_mean_pooling_ignores_padding():
    head = ClassificationHead(n_embd=4, n_labels=2, pooling="mean", dropout=0.1).eval()
    hidden = torch.randn(1, 6, 4)
    padded = hidden.clone()
    padded[0, 3:] = 100.0  # padding positions must not matter
    lengths = torch.tensor([3])
    assert torch.allclose(head(hidden, lengths), head(padded, lengths))


def test_adapter_batches_predicts_and_scores():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16, pad_id=0)).eval()
    adapter = ClassificationAdapter(["neg", "neu", "pos"], pooling="last", max_length=16, pad_id=0)
    head = adapter.build_head(model).eval()
    batch = adapter.collate([{"input_ids": [5, 6, 7], "label": 2}, {"input_ids": [8], "label": 0}])
    assert batch["idx"].tolist() == [[5, 6, 7], [8, 0, 0]] and batch["lengths"].tolist() == [3, 1]
    loss = adapter.loss(model, head, batch)
    assert abs(loss.item() - torch.log(torch.tensor(3.0)).item()) < 0.5
    predictions = adapter.predict(model, head, batch)
    assert [p["label"] for p in predictions] == [adapter.label_names[p["label_id"]] for p in predictions]
    assert all(0 < p["score"] <= 1 for p in predictions)


def test_majority_baseline():
    adapter = ClassificationAdapter(["a", "b"], pooling="last", max_length=8, pad_id=0)
    baseline = adapter.baseline(Dataset.from_dict({"label": [1, 1, 0]}), Dataset.from_dict({"label": [1, 0, 1, 1]}))
    assert baseline["accuracy"] == pytest.approx(0.75)
