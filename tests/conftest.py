"""Shared fixtures: a shrunken lifecycle config rooted in a temporary folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")  # busy CI cores
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lm_tasks.config import load_config  # noqa: E402
from tests.servers import Background, start_prefect_server  # noqa: E402

ASSETS = Path(__file__).parent / "assets"


@pytest.fixture
def smoke_overrides(tmp_path: Path) -> list[str]:
    """Overrides for a seconds-long lifecycle whose outputs and MLflow store live in tmp_path."""
    return ["debug=smoke", f"paths.root_dir={tmp_path}"]


@pytest.fixture
def smoke_cfg(smoke_overrides):
    return load_config(smoke_overrides)


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory) -> dict:
    """The environment for the tests' `python -m flows...` processes: one `prefect server` for
    the whole session, which each of them talks to instead of starting a temporary server of
    its own (10-20 s each on 2 cores)."""
    folder = tmp_path_factory.mktemp("prefect-api")
    background = Background(folder)
    try:
        yield start_prefect_server(background, folder, {**os.environ, "PREFECT_HOME": str(folder / "home")})
    finally:
        background.stop_all()
