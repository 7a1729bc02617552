"""Secrets are masked in every text the lifecycle records, and places are validated."""

from __future__ import annotations

import json
import logging

import pytest

from lm_tasks.config import ConfigError, load_config
from lm_tasks.redaction import MASK, RedactingFilter, redact, redact_tree, remember

SECRET = "s3cr3t-pa55"


@pytest.mark.parametrize("text,expected", [
    ("http://alice:s3cr3t@host:5000/api", "http://alice:***@host:5000/api"),
    ("postgresql://mlflow:p@ss:w0rd@db.internal/mlflow", "postgresql://mlflow:***@db.internal/mlflow"),
    ("uri=https://u:tok@example.com?x=1 next", "uri=https://u:***@example.com?x=1 next"),
    ("s3://bucket/key?X-Amz-Signature=abcdef&X-Amz-Credential=AKIA1", "s3://bucket/key?X-Amz-Signature=***&X-Amz-Credential=***"),
    ("https://host/x?token=abc123&page=2", "https://host/x?token=***&page=2"),
    ("http://alice:pa'ss\"w@host/", "http://alice:***@host/"),
    ("git clone https://ghp_T0KEN123@github.com/org/repo", "git clone https://***@github.com/org/repo"),
    # Nothing to mask: ports, plain URLs, e-mail addresses, sqlite paths.
    ("http://127.0.0.1:5000/api/2.0", "http://127.0.0.1:5000/api/2.0"),
    ("sqlite:////tmp/mlruns/mlflow.db", "sqlite:////tmp/mlruns/mlflow.db"),
    ("mail alice@example.com at 10:30", "mail alice@example.com at 10:30"),
])
def test_redact_masks_credentials_in_urls(text, expected):
    assert redact(text) == expected


def test_remembered_secret_is_masked_anywhere():
    remember({"tracking": {"tracking_uri": f"http://bob:{SECRET}@tracking.example:443"}})
    assert redact(f"password authentication failed: '{SECRET}' rejected") == f"password authentication failed: '{MASK}' rejected"
    # Records of values mask URLs only: a password must not eat into ids, keys or paths.
    tags = {"cache_key": f"ab{SECRET}cd", "uri": f"http://bob:{SECRET}@h", "n": 3, "none": None}
    assert redact_tree(tags) == {"cache_key": f"ab{SECRET}cd", "uri": "http://bob:***@h", "n": 3, "none": None}


def test_log_filter_masks_message_and_traceback():
    uri = "http://carol:hunter22@host/api"
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "connecting to %s", (uri,), None)
    try:
        raise ConnectionError(f"cannot reach {uri}")
    except ConnectionError:
        import sys

        record.exc_info = sys.exc_info()
    assert RedactingFilter().filter(record)
    formatted = logging.Formatter().format(record)
    assert "hunter22" not in formatted
    assert "connecting to http://carol:***@host/api" in formatted
    assert "cannot reach http://carol:***@host/api" in formatted


def test_resolved_config_record_has_no_secret(tmp_path):
    uri = f"http://dave:{SECRET}@127.0.0.1:1/"
    cfg = load_config([f"paths.root_dir={tmp_path}", f"tracking.tracking_uri={uri}"])
    assert cfg.tracking.tracking_uri == uri  # the process still has it, to connect
    assert SECRET not in cfg.resolved_yaml
    assert "http://dave:***@127.0.0.1:1/" in cfg.resolved_yaml


def test_credentials_from_the_environment_by_interpolation(tmp_path, monkeypatch):
    monkeypatch.setenv("LM_TASKS_TEST_PW", "from-env-pw")
    cfg = load_config([f"paths.root_dir={tmp_path}",
                       "tracking.tracking_uri=http://erin:${oc.env:LM_TASKS_TEST_PW}@127.0.0.1:1"])
    assert cfg.tracking.tracking_uri == "http://erin:from-env-pw@127.0.0.1:1"
    assert "from-env-pw" not in cfg.resolved_yaml


def test_launch_request_has_no_secret_and_workers_get_the_uri(tmp_path, smoke_cfg, monkeypatch):
    from lm_tasks.training.launch import TRACKING_URI_ENV, worker_tracking_uri, write_request

    uri = f"http://frank:{SECRET}@127.0.0.1:1"
    path = write_request(tmp_path, "pretrain", smoke_cfg, {"tokens_dir": tmp_path}, uri, "run123")
    assert SECRET not in path.read_text()
    request = json.loads(path.read_text())
    assert request["tracking_uri"] == "http://frank:***@127.0.0.1:1" and request["run_id"] == "run123"
    monkeypatch.setenv(TRACKING_URI_ENV, uri)  # as run_training passes it to the workers it starts
    assert worker_tracking_uri(request) == uri


# --- places ---------------------------------------------------------------------------------


@pytest.mark.parametrize("override,message", [
    ("name=cache", "overlaps cache.store"),
    ("name=cache-staging", "overlaps cache.staging_dir"),
    ("name=../../x", "must be a plain folder name"),
    ("name=a/b", "must be a plain folder name"),
    ("name=.hidden", "must be a plain folder name"),
    ("paths.output_dir=/tmp/a/../../etc", "climbs with '..'"),
    ("paths.data_dir=${paths.root_dir}/outputs/cache/data", "overlaps cache.store"),
])
def test_bad_places_are_refused(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_config([f"paths.root_dir={tmp_path}", override])


def test_explicit_absolute_places_are_accepted(tmp_path):
    cfg = load_config([f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path}/elsewhere/run1",
                       "name=my-run_2.1"])
    assert cfg.paths.output_dir == f"{tmp_path}/elsewhere/run1"


def test_command_line_credentials_never_reach_the_flow_parameters(tmp_path):
    from flows.common import stash_secrets

    uri = f"http://gina:{SECRET}@127.0.0.1:1/api"
    overrides = stash_secrets([f"paths.root_dir={tmp_path}", f"tracking.tracking_uri={uri}", "optim.lr=0.01"])
    assert not any(SECRET in o for o in overrides)
    assert overrides[1].startswith("tracking.tracking_uri=http://gina:${oc.env:LM_TASKS_SECRET_")
    assert overrides[2] == "optim.lr=0.01"
    assert load_config(overrides).tracking.tracking_uri == uri  # read back from this process's environment


def test_latest_link_replaces_only_links_it_made(tmp_path, smoke_cfg):
    from lm_tasks.stages import _link_latest

    entry = tmp_path / "outputs" / "cache" / "data" / "k1"
    entry.mkdir(parents=True)
    link = tmp_path / "outputs" / "lm-lifecycle" / "data"
    link.mkdir(parents=True)
    (link / "mine.txt").write_text("a real folder of the user")
    _link_latest(smoke_cfg, "data", entry)
    assert not link.is_symlink() and (link / "mine.txt").read_text() == "a real folder of the user"

    (link / "mine.txt").unlink()
    link.rmdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link.symlink_to(elsewhere)  # someone else's link
    _link_latest(smoke_cfg, "data", entry)
    assert link.resolve() == elsewhere.resolve()

    link.unlink()
    _link_latest(smoke_cfg, "data", entry)  # none there: made
    newer = entry.with_name("k2")
    newer.mkdir()
    _link_latest(smoke_cfg, "data", newer)  # its own: replaced
    assert link.resolve() == newer.resolve()


def test_a_planted_resume_file_cannot_choose_the_run_written_into(tmp_path, smoke_cfg):
    import mlflow

    from lm_tasks import tracking

    with tracking.tracked_run(smoke_cfg, "evaluate", tags={"cache_key": "other"}) as victim:
        pass  # e.g. the champion's run
    with tracking.tracked_run(smoke_cfg, "pretrain", tags={"cache_key": "k1"}) as interrupted:
        pass
    for named, continued in [(victim.info.run_id, False), ("not json", False), (interrupted.info.run_id, True)]:
        planted = tmp_path / "mlflow_run.json"
        planted.write_text(json.dumps({"run_id": named}) if named != "not json" else "{")
        with tracking.tracked_run(smoke_cfg, "pretrain", tags={"cache_key": "k1"}, resume_from=planted) as run:
            mlflow.log_metric("train/loss", 1.0)
        assert (run.info.run_id == named) is continued
    assert "train/loss" not in mlflow.get_run(victim.info.run_id).data.metrics
