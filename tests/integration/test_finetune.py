"""Fine-tuning learns the embedded classification task far beyond the majority baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from lm_tasks.config import load_config
from lm_tasks.models.gpt import GPT, GPTConfig
from lm_tasks.models.io import load_pretrained, save_pretrained
from lm_tasks.tasks.embedded import sentiment
from lm_tasks.tasks.evaluate import evaluate_task
from lm_tasks.tokenizer import special_token_ids, train_tokenizer
from lm_tasks.training.device import compute_device
from lm_tasks.training.finetune import finetune_task

pytestmark = pytest.mark.slow


def small_pretrained_model(tmp_path: Path, cfg, dropout: float = 0.0) -> Path:
    """A randomly initialised small GPT with a tokenizer trained on the task texts."""
    texts = Dataset.from_dict({"text": list(sentiment(n_train=500, n_validation=1)["train"]["text"])})
    tok_path = tmp_path / "tok" / "tokenizer.json"
    tokenizer = train_tokenizer(texts, cfg.tokenizer, tok_path)
    ids = special_token_ids(tokenizer, cfg.tokenizer)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=ids.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=64,
                          dropout=dropout, eos_id=ids.eos_id, pad_id=ids.pad_id))
    return save_pretrained(model, tmp_path / "pretrained", tok_path)


def test_classification_beats_the_majority_baseline(tmp_path):
    cfg = load_config([f"paths.root_dir={tmp_path}", "finetune=classification", "tokenizer.vocab_size=400",
                       "trainer.enable_progress_bar=false", "finetune.classification.max_steps=150",
                       "finetune.classification.val_check_interval=50", "finetune.classification.batch_size=32"])
    pretrained = small_pretrained_model(tmp_path, cfg)
    out = tmp_path / "ft"
    trained = finetune_task(cfg, "classification", pretrained, out)
    assert trained["best_val_accuracy"] > 0.9 and trained["info"]["label_names"] == ["negative", "positive"]

    # The exported task model, reloaded, scores the same far above the majority baseline.
    summary = evaluate_task(cfg, "classification", out / "model", tmp_path / "eval")
    assert summary["metrics"]["accuracy"] == pytest.approx(trained["best_val_accuracy"])
    assert summary["baseline"]["accuracy"] < 0.6
    # Trained and evaluated on the trainer's device (the CPU here; cuda:0 with trainer=gpu on a GPU).
    device = str(compute_device(cfg.trainer.accelerator, cfg.trainer.devices))
    assert trained["device"] == summary["device"] == device
    model = load_pretrained(out / "model")
    assert model.config.n_embd == 64
    task = json.loads((out / "model" / "task.json").read_text())
    assert task == {"task": "classification", "label_names": ["negative", "positive"], "pooling": "last",
                    "max_length": 32}
    lines = (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 300
    correct = sum(json.loads(line)["prediction"]["label"] == json.loads(line)["reference"] for line in lines)
    assert correct / 300 == pytest.approx(summary["metrics"]["accuracy"])
    assert (tmp_path / "eval" / "confusion_matrix.png").stat().st_size > 1000

    # With a test split configured, evaluate scores it instead of validation.
    data = sentiment(n_train=500, n_validation=300)
    files = {}
    for split, rows in (("train", data["train"]), ("validation", data["validation"]),
                        ("test", data["validation"].select(range(40)))):
        files[split] = tmp_path / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in rows))
    local = load_config([f"paths.root_dir={tmp_path}", "finetune=classification", "finetune.classification.data.source=local",
                         *(f"finetune.classification.data.{split}_files=[{path}]" for split, path in files.items()),
                         "finetune.classification.data.label_names=[negative,positive]"])
    scored = evaluate_task(local, "classification", out / "model", tmp_path / "eval-test")
    assert (scored["split"], scored["examples"]) == ("test", 40)
    assert len((tmp_path / "eval-test" / "predictions.jsonl").read_text().splitlines()) == 40
