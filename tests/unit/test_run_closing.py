"""Closing a tracked run: a store that fails at the end never hides the error that ended
the block. The store here is a real SQLite tracking store made unreadable inside the block."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException

from lm_tasks import tracking
from lm_tasks.config import load_config


def broken_store_config(tmp_path: Path):
    cfg = load_config(["debug=smoke", f"paths.root_dir={tmp_path}", "tracking.outage_patience_minutes=0.01"])
    return cfg, Path(cfg.tracking.tracking_uri.removeprefix("sqlite:///"))


def test_a_failing_end_run_does_not_hide_the_error_that_ended_the_run(tmp_path, caplog):
    cfg, db = broken_store_config(tmp_path)
    with caplog.at_level(logging.WARNING, logger="lm_tasks.tracking"):
        with pytest.raises(ValueError, match="the stage's own error"):
            with tracking.tracked_run(cfg, "data") as run:
                db.write_bytes(b"not a database " * 1000)  # ending the run will fail
                raise ValueError("the stage's own error")
    assert f"Could not mark MLflow run {run.info.run_id} FAILED" in caplog.text
    assert "file is not a database" in caplog.text  # the closing error is in the log, not lost


def test_a_failing_end_run_after_a_successful_block_is_raised(tmp_path):
    cfg, db = broken_store_config(tmp_path)
    with pytest.raises(MlflowException, match="file is not a database"):
        with tracking.tracked_run(cfg, "data"):
            db.write_bytes(b"not a database " * 1000)
