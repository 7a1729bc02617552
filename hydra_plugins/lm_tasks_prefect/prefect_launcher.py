"""hydra/launcher=prefect: each job of a sweep (or trial of a search) is a run of a Prefect
deployment, with the job's overrides as its `overrides` parameter, exactly what
`prefect deployment run` would pass. All jobs of a batch are created at once, so every
worker polling the deployment's work pool can take one; the launcher waits for them all.

    lm-lifecycle -m optim.lr=1e-3,3e-4 hydra/launcher=prefect
    lm-lifecycle hparams_search=tpe hydra/launcher=prefect hydra.sweeper.n_jobs=4

The workers need this project, its stores and any credentials (in their own environment:
secrets typed on this command line stay in this process).
"""

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml
from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

log = logging.getLogger(__name__)


@dataclass
class PrefectLauncherConf:
    _target_: str = "hydra_plugins.lm_tasks_prefect.prefect_launcher.PrefectLauncher"
    # <flow name>/<deployment name> from prefect.yaml; null: the deployment of the flow
    # being swept (lifecycle/lm-lifecycle for lm-lifecycle, data/lm-data for lm-data, ...).
    deployment: Optional[str] = None
    poll_seconds: float = 5.0
    # Give up on a job that has not finished by then (null: wait as long as it takes).
    timeout_minutes: Optional[float] = None


ConfigStore.instance().store(group="hydra/launcher", name="prefect", node=PrefectLauncherConf, provider="lm_tasks")


class JobRunFailed(CompactHydraException):
    """A deployment run that did not complete; Hydra prints it as one line."""


class PrefectLauncher(Launcher):
    def __init__(self, deployment: Optional[str] = None, poll_seconds: float = 5.0,
                 timeout_minutes: Optional[float] = None) -> None:
        self.deployment = deployment
        self.poll_seconds = poll_seconds
        self.timeout_minutes = timeout_minutes
        self.config: Optional[DictConfig] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        if self.deployment is None:  # the flow's name is the job's name (flows/common.py)
            name = config.hydra.job.name
            self.deployment = f"{name}/lm-{name}"

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from prefect.deployments import run_deployment
        from prefect.exceptions import ObjectNotFound
        from prefect.settings import get_current_settings

        sweep_dir = Path(self.config.hydra.sweep.dir)
        runs = []
        for number, overrides in enumerate(job_overrides, start=initial_job_idx):
            try:
                run = run_deployment(self.deployment, parameters={"overrides": list(overrides)}, timeout=0)
            except ObjectNotFound:
                raise JobRunFailed(f"no deployment {self.deployment!r} on {get_current_settings().api.url}: deploy "
                                   f"it (prefect deploy --name {self.deployment.split('/')[-1]}) and set "
                                   "PREFECT_API_URL to that server") from None
            log.info("job %d: flow run %s of %s: %s", number, run.name, self.deployment, " ".join(overrides))
            record = sweep_dir / str(number) / ".hydra"
            record.mkdir(parents=True, exist_ok=True)
            (record / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
            (record / "flow_run.yaml").write_text(yaml.safe_dump({"id": str(run.id), "name": run.name,
                                                                   "deployment": self.deployment}))
            runs.append((number, list(overrides), run))
        return [self._wait(number, overrides, run) for number, overrides, run in runs]

    def _wait(self, number: int, overrides: list[str], run: Any) -> JobReturn:
        from prefect import get_client

        deadline = time.monotonic() + 60 * self.timeout_minutes if self.timeout_minutes else None
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(run.id).state
            while not (state and state.is_final()):
                if deadline and time.monotonic() > deadline:
                    break
                time.sleep(self.poll_seconds)
                state = client.read_flow_run(run.id).state
        job = JobReturn(overrides=overrides, hydra_cfg=self.config)
        if state is not None and state.is_completed():
            job.status, job.return_value = JobStatus.COMPLETED, {"flow_run_id": str(run.id)}
        else:
            what = state.name if state else "no state"
            job.status = JobStatus.FAILED
            job.return_value = JobRunFailed(f"job {number}: flow run {run.name} ({run.id}) ended {what}"
                                            f"{'' if state and state.is_final() else ' (timed out)'}: "
                                            f"{state.message if state else ''}")
        log.info("job %d: flow run %s %s", number, run.name, state.name if state else "without a state")
        return job
