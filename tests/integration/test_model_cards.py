"""Every exported model folder (`model/`, `hf/`) and every registered version carries a model
card in the Hugging Face format, filled from the run that made it."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient

from flows.lifecycle import lifecycle
from lm_tasks.model_card import CARD, KNOWN_LICENCES, TASK_LICENCE

pytestmark = pytest.mark.slow


def read_card(folder: Path) -> tuple[dict, str]:
    text = (folder / CARD).read_text()
    assert text.startswith("---\n"), text[:100]
    _, metadata, body = text.split("---\n", 2)
    return yaml.safe_load(metadata), body


def table_value(body: str, row: str, column: int = 1) -> str:
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == row:
            return cells[column]
    raise AssertionError(f"no row {row!r} in the card")


def test_exported_models_and_registered_versions_carry_filled_cards(prefect_harness, smoke_overrides, smoke_cfg):
    ran = lifecycle(overrides=[*smoke_overrides, "finetune=classification", "data.license=CC0-1.0"])
    pretrain, tuned = Path(ran["pretrain"]["output_dir"]), Path(ran["finetune:classification"]["output_dir"])
    meta, body = read_card(pretrain / "model")
    assert (meta["library_name"], meta["pipeline_tag"], meta["license"]) == ("lm-tasks", "text-generation", "other")
    assert read_card(pretrain / "hf")[0]["library_name"] == "transformers"
    bpb = meta["model-index"][0]["results"][0]["metrics"][0]
    assert bpb["name"] == "validation bits per byte" and bpb["value"] > 0
    assert table_value(body, "licence") == "CC0-1.0" and KNOWN_LICENCES["embedded"] not in body
    assert table_value(body, "content digest (after cleaning)") == f"`{ran['data']['digest']}`"
    assert table_value(body, "vocabulary") == f"{smoke_cfg.tokenizer.vocab_size:,}"
    assert table_value(body, "steps") == str(smoke_cfg.trainer.max_steps)
    assert table_value(body, "tokens seen") == (
        f"{smoke_cfg.trainer.max_steps * smoke_cfg.trainer.global_batch_size * smoke_cfg.model.block_size:,}")
    evaluated = ran["evaluate"]["metrics"]
    # the unigram baseline beside the model is the evaluation's (same training and validation tokens)
    assert table_value(body, "validation loss (nats/token)", 2) == f"{evaluated['eval/lm/baseline_loss']:.4g}"
    for section in ("## Training data", "## Tokenizer", "## Architecture", "## Training", "## Metrics",
                    "## Intended use", "## Limitations"):
        assert section in body

    meta, body = read_card(tuned / "model")
    assert meta["pipeline_tag"] == "text-classification" and table_value(body, "licence") == TASK_LICENCE
    accuracy = table_value(body, "validation accuracy")
    assert float(accuracy) == pytest.approx(ran["finetune:classification"]["metrics"][
        "finetune/classification/best_val_accuracy"], abs=1e-3)
    assert 0 < float(table_value(body, "validation accuracy", 2)) < 1  # the majority-label baseline

    mlflow.set_tracking_uri(smoke_cfg.tracking.tracking_uri)
    client = MlflowClient()
    version = client.get_model_version("lm-lifecycle-lm", "1")
    assert version.description.startswith(f"# {smoke_cfg.name}: ") and "## Metrics" in version.description
    assert "## Held-out evaluation" in version.description
    assert f"| bpb | {evaluated['eval/lm/bpb']:.4g} | {evaluated['eval/lm/baseline_bpb']:.4g} |" in version.description
    artifacts = {a.path for a in client.list_artifacts(ran["pretrain"]["run_id"], "model")}
    assert "model/README.md" in artifacts
