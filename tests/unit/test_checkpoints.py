"""Crash-safe checkpoints and a data order that resumes exactly."""

from __future__ import annotations

import os

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


def test_rng_state_round_trips_so_dropout_masks_repeat():
    torch.manual_seed(0)
    state = rng_state()
    first = torch.rand(5)
    set_rng_state(state)
    assert torch.equal(torch.rand(5), first)


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
