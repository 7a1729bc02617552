"""Eval-gated promotion against a real MLflow registry (SQLite in a temporary folder)."""

from __future__ import annotations

import socket

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from lm_tasks.config import ConfigError, PromotionConfig, load_config
from lm_tasks.lineage import run_here
from lm_tasks.promotion import PromotionError, gate_part, promote, raise_on_error, registered_model_name
from lm_tasks.stages import StageResult


def store(tmp_path, name: str) -> str:
    """A fresh SQLite store with one experiment; returns the experiment id."""
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/{name}.db")
    return mlflow.create_experiment("promotion", artifact_location=(tmp_path / f"{name}-artifacts").as_uri())


@pytest.fixture
def models(tmp_path) -> list[StageResult]:
    """Three pretraining results, each a run with a `model` artifact folder, in a fresh store."""
    experiment = store(tmp_path, "mlflow")
    results = []
    for i in range(3):
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.log_text(f"weights {i}", "model/weights.txt")
        results.append(model(run.info.run_id, f"digest-{i}"))
    return results


def model(run_id: str, digest: str, output_dir: str = "/nonexistent") -> StageResult:
    return StageResult("pretrain", output_dir, digest, run_id, seconds=0.0)


def gate(**changes) -> PromotionConfig:
    values = dict(enabled=True, model_name="lm", alias="champion", metric="eval/lm/bpb", mode="min", margin=0.05,
                  force=False)
    return PromotionConfig(**{**values, **changes})


def champion_version(name: str = "lm", alias: str = "champion") -> str | None:
    version = MlflowClient().get_registered_model(name).aliases.get(alias)
    return None if version is None else str(version)


def hand_registered_champion(model_run: StageResult, tags: dict) -> str:
    """A champion registered by hand (or by an older version of this code): only `tags`."""
    client = MlflowClient()
    version = client.create_model_version("lm", f"runs:/{model_run.run_id}/model", run_id=model_run.run_id, tags=tags)
    client.set_registered_model_alias("lm", "champion", str(version.version))
    return str(version.version)


def promote_lm(metric: float, candidate: StageResult, **changes) -> dict:
    return promote(gate(**changes), "lm", {"eval/lm/bpb": metric}, candidate)


def test_the_alias_moves_only_when_the_metric_beats_the_champion_by_the_margin(models):
    first = promote_lm(2.0, models[0])
    assert (first["decision"], first["version"], first["champion"]) == ("promoted", "1", None)

    close = promote_lm(1.97, models[1])  # better, but by less than 0.05
    assert (close["decision"], close["version"], close["candidate"], close["champion"]) == ("rejected", "2", 1.97, 2.0)
    assert champion_version() == "1"

    better = promote_lm(1.9, models[2])
    assert (better["decision"], better["version"], better["champion_version"]) == ("promoted", "3", "1")
    assert champion_version() == "3"
    client = MlflowClient()
    assert client.get_model_version("lm", "3").run_id == models[2].run_id
    assert client.get_model_version("lm", "3").tags["eval/lm/bpb"] == "1.9"

    # The same weights again (a cached re-run): no new version, nothing moves.
    again = promote_lm(1.9, models[2])
    assert (again["decision"], again["version"]) == ("kept", "3")
    assert len(client.search_model_versions("name = 'lm'")) == 3


def test_higher_is_better_metrics_and_a_clear_error_for_unmeasured_ones(models):
    accuracy = gate(model_name="clf", metric="eval/classification/accuracy", mode="max", margin=0.0)
    assert gate_part(accuracy) == "classification"
    assert promote(accuracy, "clf", {"eval/classification/accuracy": 0.8}, models[0])["decision"] == "promoted"
    assert promote(accuracy, "clf", {"eval/classification/accuracy": 0.7}, models[1])["decision"] == "rejected"
    assert promote(accuracy, "clf", {"eval/classification/accuracy": 0.9}, models[2])["decision"] == "promoted"
    with pytest.raises(ConfigError, match=r"promotion.metric='eval/qa/f1' was not measured; measured: eval/lm/bpb"):
        promote(gate(metric="eval/qa/f1"), "lm", {"eval/lm/bpb": 1.0}, models[0])
    with pytest.raises(ConfigError, match="eval/<lm or task>/<metric>"):
        gate_part(gate(metric="bpb"))
    with pytest.raises(ConfigError, match=r"needs finetune=qa \(fine-tuned here: classification\)"):
        gate_part(gate(metric="eval/qa/f1"), ["classification"])


def test_a_champion_without_a_comparable_metric_is_kept_unless_forced(models):
    MlflowClient().create_registered_model("lm")
    by_hand = hand_registered_champion(models[0], {})  # no eval/lm/bpb tag at all

    kept = promote_lm(0.5, models[1])  # much better, but there is nothing to compare with
    assert kept["decision"] == "no-comparable-champion"
    assert "promotion.force=true" in kept["reason"] and kept["champion_version"] == by_hand
    assert champion_version() == by_hand

    forced = promote_lm(0.5, models[1], force=True)
    assert (forced["decision"], forced["champion_version"]) == ("forced", by_hand)
    assert champion_version() == forced["version"] == kept["version"]  # registered once


def test_nan_and_inf_candidates_are_rejected_and_a_nan_champion_is_not_comparable(models):
    for value in (float("nan"), float("inf")):
        result = promote_lm(value, models[0])
        assert (result["decision"], result["version"]) == ("rejected", None)
        assert "only a finite value can win" in result["reason"]
    assert MlflowClient().search_model_versions("name = 'lm'") == []  # a broken evaluation is not registered

    # A champion whose value is NaN (registered by older code) no longer blocks every candidate
    # silently: it is reported as not comparable, and force replaces it.
    MlflowClient().create_registered_model("lm")
    hand_registered_champion(models[0], {"eval/lm/bpb": "nan"})
    assert promote_lm(1.0, models[1])["decision"] == "no-comparable-champion"
    assert promote_lm(1.0, models[1], force=True)["decision"] == "forced"
    assert promote_lm(float("nan"), models[2], force=True)["decision"] == "rejected"  # force never takes NaN


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


def test_a_registry_error_is_decision_error_and_fails_the_lifecycle(models, monkeypatch):
    promote_lm(2.0, models[0])
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    sqlite_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"http://127.0.0.1:{closed_port()}")
    try:
        result = promote_lm(1.0, models[1])  # returns: a registry error is a decision, not a crash
    finally:
        mlflow.set_tracking_uri(sqlite_uri)
    assert result["decision"] == "error"
    assert "registry error, 'champion' not moved" in result["reason"] and "127.0.0.1" in result["reason"]
    with pytest.raises(PromotionError, match="promotion of lm failed: registry error"):
        raise_on_error(result)
    assert champion_version() == "1"


def test_the_default_registered_model_is_the_gated_part(models):
    cfg = load_config(["finetune=classification", "promotion.metric=eval/classification/accuracy",
                       "promotion.mode=max"]).promotion
    assert cfg.model_name is None
    assert registered_model_name(cfg, "proj") == "proj-classification"
    assert registered_model_name(gate(model_name=None), "proj") == "proj-lm"
    assert registered_model_name(cfg, "proj") != registered_model_name(gate(model_name=None), "proj")

    lm = promote(gate(model_name=None), "proj-lm", {"eval/lm/bpb": 2.0}, models[0])
    task = promote(cfg, "proj-classification", {"eval/classification/accuracy": 0.9}, models[1])
    assert lm["decision"] == task["decision"] == "promoted"
    assert champion_version("proj-lm") == "1" and champion_version("proj-classification") == "1"
    assert MlflowClient().get_model_version("proj-classification", "1").tags["part"] == "classification"


def test_a_champion_moved_while_comparing_is_compared_again(models, monkeypatch, caplog):
    promote_lm(2.0, models[0])
    real = MlflowClient.get_registered_model
    moved = []

    def another_lifecycle_moves_it_after_our_first_read(self, name):
        registered = real(self, name)
        monkeypatch.setattr(MlflowClient, "get_registered_model", real)  # only once
        moved.append(promote_lm(1.0, models[2])["version"])  # a better model becomes champion
        return registered

    monkeypatch.setattr(MlflowClient, "get_registered_model", another_lifecycle_moves_it_after_our_first_read)
    result = promote_lm(1.5, models[1])  # beats 2.0 (v1), not 1.0 (v3)
    assert moved == ["3"] and "lm@champion moved while comparing; comparing again" in caplog.text
    assert (result["decision"], result["champion_version"], result["champion"]) == ("rejected", "3", 1.0)
    assert champion_version() == "3"


def test_a_model_whose_run_is_in_another_store_is_logged_again_here(tmp_path):
    experiment_a = store(tmp_path, "a")
    with mlflow.start_run(experiment_id=experiment_a) as run_a:
        pass
    model_dir = tmp_path / "entry" / "model"
    model_dir.mkdir(parents=True)
    (model_dir / "weights.bin").write_bytes(b"weights")
    cached = StageResult("finetune:qa", str(tmp_path / "entry"), "digest-qa", run_a.info.run_id, 0.0, cached=True)

    experiment_b = store(tmp_path, "b")
    assert run_here(run_a.info.run_id) is None
    qa = gate(model_name=None, metric="eval/qa/f1", mode="max")
    with mlflow.start_run(experiment_id=experiment_b) as lifecycle_b:
        result = promote(qa, "proj-qa", {"eval/qa/f1": 0.5}, cached)
    assert result["decision"] == "promoted"
    version = MlflowClient().get_model_version("proj-qa", result["version"])
    assert version.run_id == lifecycle_b.info.run_id  # registered from this store's lifecycle run
    assert (tmp_path / "b-artifacts" / lifecycle_b.info.run_id / "artifacts" / "model" / "weights.bin").read_bytes() \
        == b"weights"
