"""Data-parallel training on CPU (gloo): two processes, on one "node" or joined across two
by rendezvous, train what one process trains; fine-tuning too; FSDP (FSDP2) as well, and a
killed FSDP run resumes from its checkpoint."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from lm_tasks.config import load_config
from lm_tasks.models.gpt import GPT
from lm_tasks.models.io import load_pretrained
from lm_tasks.stages import StageResult, run_data, run_finetune, run_pretrain, run_tokenizer
from lm_tasks.training.checkpoints import load_checkpoint, submodule_state
from lm_tasks.training.launch import launch_command, run_training, write_request

pytestmark = pytest.mark.slow

# The same global batch (8 sequences per optimizer step) on one process, then on two of 4 each.
TRAINING = ["model.dropout=0.0", "trainer.max_steps=12", "trainer.global_batch_size=8",
            "trainer.val_check_interval=3", "trainer.limit_val_batches=1.0", "trainer.log_every_n_steps=1"]
TWO_PROCESSES = ["trainer.devices=2", "trainer.strategy=ddp"]
# The FSDP preset (bf16 on GPUs) as a CPU user runs it.
FSDP_ON_CPU = ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.devices=2"]


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> tuple[list[str], StageResult, StageResult]:
    """Overrides, tokens and the single-process pretraining every test compares against."""
    overrides = ["debug=smoke", f"paths.root_dir={tmp_path_factory.mktemp('root')}"] + TRAINING
    cfg = load_config(overrides)
    tokens = run_tokenizer(cfg, run_data(cfg))
    return overrides, tokens, run_pretrain(cfg, tokens)


def history(cfg, run_id: str, metric: str) -> dict[int, float]:
    mlflow.set_tracking_uri(cfg.tracking.tracking_uri)
    return {m.step: m.value for m in MlflowClient().get_metric_history(run_id, metric)}


def assert_same_trajectory(cfg, one: StageResult, two: StageResult) -> None:
    """Validation loss at every check: equal up to float summation order (tolerance 5e-5 on
    losses of about 5)."""
    expected, got = history(cfg, one.run_id, "val/loss"), history(cfg, two.run_id, "val/loss")
    assert sorted(got) == sorted(expected) == [2, 5, 8, 11]
    assert max(abs(got[step] - expected[step]) for step in expected) < 5e-5
    assert got[11] < got[2] - 0.2  # and it learned


def test_two_processes_follow_the_single_process_trajectory(single):
    overrides, tokens, one = single
    ddp = load_config(overrides + TWO_PROCESSES)
    two = run_pretrain(ddp, tokens)
    assert two.key != one.key  # a different stage output, cached apart
    assert_same_trajectory(ddp, one, two)

    # The exported weights and the DDP checkpoint load in this single process.
    a, b = load_pretrained(Path(one.output_dir) / "model"), load_pretrained(Path(two.output_dir) / "model")
    # (Adam divides by the gradient's running RMS, so summation-order differences of
    # near-zero gradients show up in the weights at ~1e-5.)
    assert max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters())) < 5e-5
    state = load_checkpoint(Path(two.output_dir) / "checkpoints" / "best.ckpt")["state_dict"]  # what was exported
    model = GPT(b.config)
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    x = torch.randint(0, b.config.vocab_size, (2, b.config.block_size))
    assert torch.allclose(model.eval()(x)[0], b.eval()(x)[0], atol=1e-5)


def max_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


def test_fsdp_on_two_processes_follows_the_single_process_trajectory(single):
    """FSDP2, each block and the root sharded over 2 CPU processes, blocks recomputed in backward
    (activation checkpointing). The same tolerance as DDP: only the gradient summation order
    differs (a reduce-scatter of two half-batch sums; the recomputed activations are the same
    numbers without dropout); measured 1e-6 on val/loss, 8e-6 on the weights."""
    overrides, tokens, one = single
    cfg = load_config(overrides + FSDP_ON_CPU + ["trainer.activation_checkpointing=true"])
    two = run_pretrain(cfg, tokens)
    assert_same_trajectory(cfg, one, two)

    # best.ckpt is one full file of plain tensors, gathered on rank 0; the export holds exactly them.
    state = load_checkpoint(Path(two.output_dir) / "checkpoints" / "best.ckpt")["state_dict"]
    assert all(type(tensor) is torch.Tensor for tensor in state.values())  # no DTensor shards
    exported = load_pretrained(Path(two.output_dir) / "model")
    trained = GPT(exported.config)
    trained.load_state_dict(submodule_state(state, "model"))  # strict: every name of a plain GPT
    assert max_difference(trained, exported) == 0.0
    assert max_difference(exported, load_pretrained(Path(one.output_dir) / "model")) < 5e-5  # as for DDP


def kill_job(launcher: subprocess.Popen, request: Path) -> None:
    """SIGKILL torchrun and its workers: they run in sessions of their own, so they are found by
    the request file on their command line."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if str(request).encode() in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)
        except (FileNotFoundError, ProcessLookupError):  # it ended meanwhile
            pass
    launcher.wait()


def test_a_killed_fsdp_run_resumes_from_its_full_checkpoint(single, tmp_path):
    """SIGKILL once the first last.ckpt is written; run again in the same folder, the two ranks
    load that one full file into their shards (weights, Adam state, schedule, data position)
    and end where one uninterrupted process ends. With SHARD_GRAD_OP, the other FSDP2 mapping."""
    overrides, tokens, one = single
    cfg = load_config(overrides + FSDP_ON_CPU + ["trainer.fsdp_sharding=SHARD_GRAD_OP"])
    inputs = {"tokens_dir": tokens.output_dir, "tokenizer_path": Path(tokens.output_dir) / "tokenizer.json"}
    uri = cfg.tracking.tracking_uri
    request = write_request(tmp_path, "pretrain", cfg, inputs, uri, run_id="killed", log_metrics=False)
    workers = subprocess.Popen(launch_command(cfg.trainer, "torchrun", request, rdzv_id="killed"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not last.is_file():
        assert workers.poll() is None and time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.01)
    kill_job(workers, request)
    assert load_checkpoint(last)["global_step"] < 12  # killed part-way

    summary = run_training(cfg, "pretrain", inputs, tmp_path, uri, run_id="resumed", log_metrics=False)
    assert summary["steps"] == 12
    assert abs(summary["best_val_loss"] - history(cfg, one.run_id, "val/loss")[11]) < 5e-5
    resumed = load_pretrained(tmp_path / "model")
    assert max_difference(resumed, load_pretrained(Path(one.output_dir) / "model")) < 5e-5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_second_node_joins_with_the_written_join_script(single):
    """Two "nodes" (one process each, both on this machine): the stage starts node 0 and
    writes join.sh; running it from another shell completes the job."""
    overrides, tokens, one = single
    cfg = load_config(overrides + ["trainer.num_nodes=2", "trainer.devices=1", "trainer.strategy=ddp",
                                   "trainer.launcher=torchrun", f"trainer.rdzv_endpoint=127.0.0.1:{free_port()}"])
    joined: list[subprocess.CompletedProcess] = []

    def second_node() -> None:
        deadline = time.monotonic() + 120
        while not (scripts := list(Path(cfg.cache.store).glob("pretrain/*.partial/join.sh"))):
            assert time.monotonic() < deadline, "the pretrain stage wrote no join.sh"
            time.sleep(0.2)
        joined.append(subprocess.run(["sh", str(scripts[0])], capture_output=True, text=True, timeout=300))

    node1 = threading.Thread(target=second_node)
    node1.start()
    two = run_pretrain(cfg, tokens)
    node1.join()
    assert joined[0].returncode == 0, joined[0].stderr[-3000:]
    assert "--nnodes=2" in (Path(two.output_dir) / "join.sh").read_text()
    assert_same_trajectory(cfg, one, two)


def test_finetuning_on_two_processes_matches_one(single):
    overrides, _, pretrained = single
    task = ["finetune=classification", "finetune.classification.max_steps=20", "finetune.classification.batch_size=8",
            "finetune.classification.val_check_interval=5", "finetune.classification.patience=10"]
    one_cfg, two_cfg = load_config(overrides + task), load_config(overrides + task + TWO_PROCESSES)
    one = run_finetune(one_cfg, "classification", pretrained)
    two = run_finetune(two_cfg, "classification", pretrained)
    expected = history(one_cfg, one.run_id, "val/loss")
    got = history(two_cfg, two.run_id, "val/loss")
    assert sorted(got) == sorted(expected) and len(got) == 4
    assert max(abs(got[step] - expected[step]) for step in expected) < 1e-5
    assert history(two_cfg, two.run_id, "val/accuracy") == history(one_cfg, one.run_id, "val/accuracy")
    assert (Path(two.output_dir) / "model" / "head.safetensors").is_file()
