"""How training processes are started: the launcher chosen and the command it runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lm_tasks.config import ConfigError, load_config
from lm_tasks.training.launch import launch_command, resolve_launcher

REQUEST = Path("/shared/run/launch_request.json")
WORKER = ["-m", "lm_tasks.training.launch", str(REQUEST)]


def trainer(*overrides: str):
    return load_config([f"trainer.{o}" for o in overrides]).trainer


@pytest.fixture(autouse=True)
def no_launcher_env(monkeypatch):
    for name in ("LOCAL_RANK", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)


def test_one_node_runs_standalone_torchrun():
    command = launch_command(trainer("devices=4", "strategy=ddp"), "torchrun", REQUEST, rdzv_id="abc")
    assert command[1:] == ["-m", "torch.distributed.run", "--nproc-per-node=4", "--standalone", "--nnodes=1", *WORKER]


def test_several_nodes_meet_at_the_rendezvous_endpoint():
    t = trainer("devices=8", "num_nodes=2", "strategy=ddp", "rdzv_endpoint=head:29500")
    command = launch_command(t, "torchrun", REQUEST, rdzv_id="run42")
    assert command[3:] == ["--nproc-per-node=8", "--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=head:29500",
                           "--rdzv-id=run42", *WORKER]


def test_srun_starts_every_task_of_the_allocation():
    command = launch_command(trainer("devices=4", "num_nodes=3", "strategy=ddp"), "srun", REQUEST, rdzv_id="x")
    assert command[:4] == ["srun", "--nodes=3", "--ntasks-per-node=4", "--kill-on-bad-exit=1"]
    assert command[-3:] == WORKER


def test_auto_picks_srun_for_several_nodes_inside_a_slurm_job(monkeypatch):
    assert resolve_launcher(trainer("num_nodes=2")) == "torchrun"
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    assert resolve_launcher(trainer("num_nodes=2")) == "srun"
    assert resolve_launcher(trainer("num_nodes=1", "devices=2")) == "torchrun"  # one node: torchrun is enough
    assert resolve_launcher(trainer("num_nodes=2", "launcher=torchrun")) == "torchrun"


def test_a_flow_already_running_as_one_rank_trains_in_process(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert resolve_launcher(trainer("devices=2")) == "none"


def test_unknown_launcher_names_the_choices():
    with pytest.raises(ConfigError, match="trainer.launcher.*torchrun"):
        trainer("launcher=mpirun")


def test_a_training_process_dies_with_the_process_that_started_it(tmp_path):
    """A flow killed by SIGKILL takes its launcher and workers with it (they would otherwise go
    on writing into the folder its re-run resumes from)."""
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import subprocess, sys, time
        from lm_tasks.training.launch import die_with_parent
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], preexec_fn=die_with_parent)
        open({str(pid_file)!r}, "w").write(str(child.pid))
        time.sleep(60)
    """)], cwd=Path(__file__).resolve().parents[2])
    deadline = time.monotonic() + 30
    while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pid_file.read_text())
    assert _alive(child)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    """Running (not a zombie waiting for init to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
