"""Crash-safe checkpoints and a data order that resumes exactly."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from lm_tasks.data.datamodule import ResumableSampler
from lm_tasks.training.checkpoints import AtomicCheckpointIO, CheckpointError, load_checkpoint, rng_state, set_rng_state


def test_atomic_save_replaces_the_file_whole_and_leaves_no_temporaries(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "weights": torch.ones(3)}, path)
    io.save_checkpoint({"global_step": 2, "weights": torch.zeros(3)}, path)
    assert os.listdir(path.parent) == ["last.ckpt"]
    loaded = io.load_checkpoint(path)
    assert loaded["global_step"] == 2 and torch.equal(loaded["weights"], torch.zeros(3))


def test_a_truncated_checkpoint_is_named_in_a_clear_error(tmp_path):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 7, "weights": torch.randn(1000)}, path)
    path.write_bytes(path.read_bytes()[:500])  # what a non-atomic writer killed mid-write leaves
    with pytest.raises(CheckpointError, match=rf"Checkpoint {path} is truncated or corrupt .*cache.refresh=pretrain"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.ckpt")


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(0)
    random.seed(1)
    np.random.seed(2)
    np.random.standard_normal()  # numpy now caches a gaussian: part of the state too
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"rng_state": rng_state()}, path)
    first = (torch.rand(5), random.random(), np.random.standard_normal(3))
    set_rng_state(load_checkpoint(path)["rng_state"])  # weights_only=True
    again = (torch.rand(5), random.random(), np.random.standard_normal(3))
    assert torch.equal(again[0], first[0]) and again[1] == first[1] and np.array_equal(again[2], first[2])


class Payload:
    """What an attacker plants: unpickling it calls Path.touch(marker)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch on the bare pickle
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dumps"])
def test_a_planted_pickle_payload_is_refused_and_never_runs(tmp_path, writer):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "pretrain" / "key.partial" / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    planted = {"global_step": 5, "state_dict": {"w": torch.ones(2)}, "rng_state": Payload(marker)}
    if writer == "torch.save":  # a well-formed checkpoint file with one object inside
        torch.save(planted, path)
    else:  # a bare pickle named like one
        path.write_bytes(pickle.dumps(planted))
    for load in (load_checkpoint, AtomicCheckpointIO().load_checkpoint):
        with pytest.raises(CheckpointError) as err:
            load(path)
        message = str(err.value)
        assert str(path) in message and "cache.refresh=pretrain" in message
        # What was refused is named; torch's advice to load or allow it anyway is not passed on.
        assert ("GLOBAL getattr" if writer == "torch.save" else "Unsupported operand") in message
        assert "weights_only=False" not in message and "safe_globals" not in message
    assert not marker.exists()


def test_the_plugin_never_loads_with_weights_only_false(tmp_path):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 3}, path)
    assert AtomicCheckpointIO().load_checkpoint(path, weights_only=True)["global_step"] == 3
    with pytest.raises(CheckpointError, match=f"Refusing to load checkpoint {path} with weights_only=False"):
        AtomicCheckpointIO().load_checkpoint(path, weights_only=False)


def test_the_sampler_resumed_at_any_position_continues_the_same_order():
    full = list(ResumableSampler(n_items=10, total=35, seed=3))
    assert len(full) == 35 and sorted(full[:10]) == list(range(10)) and full[:10] != full[10:20]  # reshuffled
    for start in (0, 7, 10, 23):
        assert list(ResumableSampler(n_items=10, total=35, seed=3, start=start)) == full[start:]


def test_ranks_split_one_order_between_them():
    full = list(ResumableSampler(n_items=10, total=24, seed=1))
    ranks = [list(ResumableSampler(n_items=10, total=12, seed=1, rank=r, world_size=2)) for r in (0, 1)]
    assert [x for pair in zip(*ranks) for x in pair] == full
    resumed = list(ResumableSampler(n_items=10, total=12, seed=1, start=5, rank=1, world_size=2))
    assert resumed == ranks[1][5:]
