"""Where a new MLflow experiment puts its artifacts (tracking.artifact_location)."""

from __future__ import annotations

from pathlib import Path

from lm_tasks.config import load_config
from lm_tasks.tracking import _artifact_location


def location(tmp_path: Path, *overrides: str) -> str | None:
    return _artifact_location(load_config([f"paths.root_dir={tmp_path}", *overrides]).tracking)


def test_a_tracking_server_chooses_unless_a_location_is_set(tmp_path):
    assert location(tmp_path, "tracking.tracking_uri=http://127.0.0.1:5000") is None
    assert location(tmp_path, "tracking.tracking_uri=https://user@mlflow.example.com") is None
    assert location(tmp_path, "tracking.tracking_uri=databricks") is None
    assert location(tmp_path, "tracking.tracking_uri=http://127.0.0.1:5000",
                    "tracking.artifact_location=s3://bucket/mlflow") == "s3://bucket/mlflow"


def test_sqlite_stores_keep_artifacts_beside_the_database(tmp_path):
    assert location(tmp_path) == (tmp_path / "mlruns" / "artifacts").as_uri()  # the default store
    assert location(tmp_path, f"tracking.tracking_uri='sqlite:///{tmp_path}/other/x.db?timeout=20'") == \
        (tmp_path / "other" / "artifacts").as_uri()
    assert location(tmp_path, f"tracking.artifact_location={tmp_path}/mine") == (tmp_path / "mine").as_uri()
