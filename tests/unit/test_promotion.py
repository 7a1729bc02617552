"""Eval-gated promotion against a real MLflow registry (SQLite in a temporary folder)."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from lm_tasks.config import ConfigError, PromotionConfig
from lm_tasks.promotion import gate_part, promote


@pytest.fixture
def model_runs(tmp_path):
    """Three runs, each with a `model` artifact folder, in a fresh store."""
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = mlflow.create_experiment("promotion", artifact_location=(tmp_path / "artifacts").as_uri())
    ids = []
    for i in range(3):
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.log_text(f"weights {i}", "model/weights.txt")
            ids.append(run.info.run_id)
    return ids


def gate(**changes) -> PromotionConfig:
    values = dict(enabled=True, model_name="lm", alias="champion", metric="eval/lm/bpb", mode="min", margin=0.05)
    return PromotionConfig(**{**values, **changes})


def test_the_alias_moves_only_when_the_metric_beats_the_champion_by_the_margin(model_runs):
    first = promote(gate(), {"eval/lm/bpb": 2.0}, model_runs[0], "digest-0")
    assert (first["decision"], first["version"], first["champion"]) == ("promoted", "1", None)

    close = promote(gate(), {"eval/lm/bpb": 1.97}, model_runs[1], "digest-1")  # better, but by less than 0.05
    assert (close["decision"], close["version"], close["candidate"], close["champion"]) == ("rejected", "2", 1.97, 2.0)
    client = MlflowClient()
    assert str(client.get_model_version_by_alias("lm", "champion").version) == "1"

    better = promote(gate(), {"eval/lm/bpb": 1.9}, model_runs[2], "digest-2")
    assert (better["decision"], better["version"], better["champion_version"]) == ("promoted", "3", "1")
    assert str(client.get_model_version_by_alias("lm", "champion").version) == "3"
    assert client.get_model_version("lm", "3").run_id == model_runs[2]

    # The same weights again (a cached re-run): no new version, nothing moves.
    again = promote(gate(), {"eval/lm/bpb": 1.9}, model_runs[2], "digest-2")
    assert (again["decision"], again["version"]) == ("kept", "3")
    assert len(client.search_model_versions("name = 'lm'")) == 3


def test_higher_is_better_metrics_and_a_clear_error_for_unmeasured_ones(model_runs):
    accuracy = gate(model_name="clf", metric="eval/classification/accuracy", mode="max", margin=0.0)
    assert gate_part(accuracy) == "classification"
    assert promote(accuracy, {"eval/classification/accuracy": 0.8}, model_runs[0], "a")["decision"] == "promoted"
    assert promote(accuracy, {"eval/classification/accuracy": 0.7}, model_runs[1], "b")["decision"] == "rejected"
    assert promote(accuracy, {"eval/classification/accuracy": 0.9}, model_runs[2], "c")["decision"] == "promoted"
    with pytest.raises(ConfigError, match=r"promotion.metric='eval/qa/f1' was not measured; measured: eval/lm/bpb"):
        promote(gate(metric="eval/qa/f1"), {"eval/lm/bpb": 1.0}, model_runs[0], "d")
    with pytest.raises(ConfigError, match="eval/<lm or task>/<metric>"):
        gate_part(gate(metric="bpb"))
    with pytest.raises(ConfigError, match=r"needs finetune=qa \(fine-tuned here: classification\)"):
        gate_part(gate(metric="eval/qa/f1"), ["classification"])
