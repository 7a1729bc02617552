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
from tests.servers import POOL, Background, cli, isolated_env, start_prefect_server  # noqa: E402

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
    its own (10-20 s each on 2 cores). The deployment tests' workers use it too: its scheduler
    looks for due schedules every 2 s instead of every minute, and a run waiting for a
    deployment's concurrency slot tries again after 1 s instead of 30."""
    folder = tmp_path_factory.mktemp("prefect-api")
    background = Background(folder)
    try:
        yield start_prefect_server(background, folder, {**os.environ, "PREFECT_HOME": str(folder / "home")},
                                   {"PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
                                    "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "1"})
    finally:
        background.stop_all()


@pytest.fixture(scope="session")
def prefect_pool(prefect_api, tmp_path_factory) -> str:
    """The session's Prefect server with the `lm-tasks` process pool, for tests that start a
    worker of their own (tests.servers.start_worker); returns the server's API URL."""
    api_url = prefect_api["PREFECT_API_URL"]
    cli(["work-pool", "create", POOL, "--type", "process"],
        {**isolated_env(tmp_path_factory.mktemp("prefect-pool")), "PREFECT_API_URL": api_url})
    return api_url


@pytest.fixture(scope="module")
def prefect_harness(prefect_api):
    """Flows called in this process (and the Dask workers they start) report to the session's
    Prefect server, as under `prefect_test_harness`, without a temporary server per module
    (10-20 s each on 2 cores)."""
    import inspect

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:  # what prefect_test_harness does on exit: nothing left to send later
        try:
            result = APILogWorker.instance().drain()
            if inspect.isawaitable(result):
                await result
        except RuntimeError:  # never started
            pass
        result = EventsWorker.drain_all()
        if inspect.isawaitable(result):
            await result

    with temporary_settings(updates={PREFECT_API_URL: prefect_api["PREFECT_API_URL"]}):
        yield
        run_coro_as_sync(drain())
