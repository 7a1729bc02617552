"""Training on one process or many: the pretrain and fine-tune stages call `run_training`,
which trains in this process, or on several processes across one or more machines.

Launchers (`trainer.launcher`):
- `torchrun`: on one node, `torchrun --standalone --nproc-per-node=N`. On several nodes
  the stage starts node 0 itself (c10d rendezvous at `trainer.rdzv_endpoint`) and writes
  `join.sh` beside the request: run it on each other node (shared filesystem).
- `srun`: inside a SLURM allocation, one `srun` starts every task on every node.
- `auto`: `srun` for several nodes inside a SLURM job, else `torchrun`.
- `none`: train in this process; for flows that were themselves started once per rank.

Every worker runs `python -m lm_tasks.training.launch <request.json>`: the job, the
resolved config, the input and output folders and the MLflow run to log into. Lightning
reads the ranks the launcher sets; every rank trains, rank 0 logs and exports. The flow,
the stage cache and the tracking stay in the one process that launched the workers.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from lm_tasks.artifacts import read_json, write_json
from lm_tasks.config import ConfigError, LifecycleConfig, TrainerConfig, config_from_dict
from lm_tasks.redaction import install_log_filter, redact_tree, remember
from lm_tasks.training.distributed import world_size

log = logging.getLogger(__name__)

REQUEST, SUMMARY, JOIN = "launch_request.json", "train_summary.json", "join.sh"
DEFAULT_RDZV_PORT = 29400
PR_SET_PDEATHSIG = 1  # prctl(2)
# Loaded here, not in die_with_parent: that runs between fork and exec, where importing or
# loading a library could deadlock on a lock another thread of the flow held at the fork.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
TRACKING_URI_ENV = "LM_TASKS_TRACKING_URI"  # the unredacted URI, from the launching process to its workers


def run_training(cfg: LifecycleConfig, job: str, inputs: dict, out_dir: Path, tracking_uri: str,
                 run_id: str, log_metrics: bool = True) -> dict:
    """Run `job` ("pretrain" or "finetune") with `inputs`; return its summary (also written
    to `out_dir/train_summary.json`). Metrics go to the MLflow run `run_id`, unless
    `log_metrics` is false (a cross-validation fold: its curves would mix with the stage's)."""
    launcher = resolve_launcher(cfg.trainer)
    counted = job == "pretrain" and not cfg.model.trainable  # an n-gram model is fitted in one process
    if world_size(cfg.trainer) == 1 or launcher == "none" or counted:
        logger = training_logger(cfg, tracking_uri, run_id) if log_metrics else False
        summary = _train(job, cfg, inputs, out_dir, logger)
        write_json(out_dir / SUMMARY, summary)
        return summary
    request = write_request(out_dir, job, cfg, inputs, tracking_uri, run_id, log_metrics)
    command = launch_command(cfg.trainer, launcher, request, rdzv_id=run_id)
    if launcher == "torchrun" and cfg.trainer.num_nodes > 1:
        join = out_dir / JOIN
        join.write_text(f"#!/bin/sh\n# Run on each of the other {cfg.trainer.num_nodes - 1} node(s) to join "
                        f"this {job} job (shared filesystem).\ncd {shlex.quote(os.getcwd())} && exec "
                        f"{shlex.join(command)}\n")
        log.warning("%s: waiting for %d more node(s) to join at %s: on each, run  sh %s  (with the tracking "
                    "credentials in its environment: %s, or MLflow's MLFLOW_TRACKING_* variables)", job,
                    cfg.trainer.num_nodes - 1, rendezvous_endpoint(cfg.trainer), join, TRACKING_URI_ENV)
    log.info("%s: %d processes: %s", job, world_size(cfg.trainer), shlex.join(command))
    result = subprocess.run(command, env={**os.environ, TRACKING_URI_ENV: tracking_uri}, preexec_fn=die_with_parent)
    if result.returncode != 0:
        raise RuntimeError(f"Distributed {job} failed (exit {result.returncode}); its log is above. "
                           f"Command: {shlex.join(command)}")
    return read_json(out_dir / SUMMARY)


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when the one that started it dies, however it dies
    (Linux; elsewhere a no-op). A killed flow's training processes would otherwise go on
    writing into the stage folder that its re-run resumes from. Set in the launcher (torchrun,
    srun) before it starts and in every worker, whose parent is the launcher."""
    if _prctl is None:
        return
    parent = os.getppid()
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def write_request(out_dir: Path, job: str, cfg: LifecycleConfig, inputs: dict, tracking_uri: str,
                  run_id: str, log_metrics: bool = True) -> Path:
    """The workers' request file. It lands in the stage's folder, and so in the shared cache
    store: no secret goes in. Workers get the real tracking URI from their environment."""
    request = out_dir / REQUEST
    write_json(request, redact_tree({"job": job, "config": asdict(cfg), "out_dir": str(out_dir),
                                     "inputs": {k: str(v) for k, v in inputs.items()},
                                     "tracking_uri": tracking_uri, "run_id": run_id,
                                     "log_metrics": log_metrics}))
    return request


def worker_tracking_uri(request: dict) -> str:
    return os.environ.get(TRACKING_URI_ENV, request["tracking_uri"])


def resolve_launcher(t: TrainerConfig) -> str:
    if t.launcher != "auto":
        return t.launcher
    if "LOCAL_RANK" in os.environ:  # this flow is already one rank of a job someone else launched
        return "none"
    return "srun" if t.num_nodes > 1 and "SLURM_JOB_ID" in os.environ else "torchrun"


def rendezvous_endpoint(t: TrainerConfig) -> str:
    return t.rdzv_endpoint or f"{socket.getfqdn()}:{DEFAULT_RDZV_PORT}"


def launch_command(t: TrainerConfig, launcher: str, request: Path, rdzv_id: str) -> list[str]:
    """The command that starts every worker of this node (torchrun) or of the allocation (srun)."""
    per_node = world_size(t) // t.num_nodes
    worker = ["-m", "lm_tasks.training.launch", str(request)]
    if launcher == "srun":
        return ["srun", f"--nodes={t.num_nodes}", f"--ntasks-per-node={per_node}", "--kill-on-bad-exit=1",
                sys.executable, *worker]
    if launcher != "torchrun":
        raise ConfigError(f"trainer.launcher={launcher!r} cannot start processes; use torchrun or srun")
    torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={per_node}"]
    if t.num_nodes == 1:
        return [*torchrun, "--standalone", "--nnodes=1", *worker]
    return [*torchrun, f"--nnodes={t.num_nodes}", "--rdzv-backend=c10d",
            f"--rdzv-endpoint={rendezvous_endpoint(t)}", f"--rdzv-id={rdzv_id}", *worker]


def training_logger(cfg: LifecycleConfig, tracking_uri: str, run_id: str):
    """The Lightning logger of rank 0: into the stage's run, surviving a tracking server outage."""
    from lm_tasks.training.mlflow_logger import OutageTolerantMLFlowLogger

    return OutageTolerantMLFlowLogger(tracking_uri, run_id, patience_s=60 * cfg.tracking.outage_patience_minutes)


def _train(job: str, cfg: LifecycleConfig, inputs: dict, out_dir: Path, logger) -> dict:
    if job == "pretrain":
        from lm_tasks.training.pretrain import pretrain

        summary = pretrain(cfg, inputs["tokens_dir"], inputs["tokenizer_path"], out_dir, logger,
                           snapshots_dir=inputs.get("snapshots_dir"))
    elif job == "finetune":
        from lm_tasks.training.finetune import finetune_task

        fold = inputs.get("fold")  # "i/k": a cross-validation fold (a string, as in the request file)
        summary = finetune_task(cfg, inputs["task"], inputs["pretrained_dir"], out_dir, logger,
                                tuple(int(n) for n in fold.split("/")) if fold else None)
    else:
        raise ValueError(f"unknown training job {job!r}; expected pretrain or finetune")
    if logger:  # sends what is still kept; Lightning did already where it trained (not an n-gram fit)
        logger.finalize("success")
    return summary


def global_rank() -> int:
    """This worker's rank as torchrun (RANK) or SLURM (SLURM_PROCID) set it."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def main(request_path: str) -> None:
    die_with_parent()
    request = read_json(request_path)
    cfg = config_from_dict(request["config"])
    rank_zero = global_rank() == 0
    tracking_uri = worker_tracking_uri(request)
    remember(tracking_uri)  # this worker's log lines and errors mask it too
    install_log_filter()
    logs = rank_zero and request.get("log_metrics", True)
    logger = training_logger(cfg, tracking_uri, request["run_id"]) if logs else False
    summary = _train(request["job"], cfg, request["inputs"], Path(request["out_dir"]), logger)
    if rank_zero:
        write_json(Path(request["out_dir"]) / SUMMARY, summary)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s %(name)s [rank {global_rank()}] %(message)s")
    main(sys.argv[1])
