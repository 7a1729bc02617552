"""A checkpoint planted in the cache store where pretraining resumes from is refused, and its
pickle payload never runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lm_tasks.config import load_config
from lm_tasks.stage_keys import pretrain_key
from lm_tasks.stages import run_data, run_pretrain, run_tokenizer
from lm_tasks.training.checkpoints import CheckpointError

pytestmark = pytest.mark.slow


class Payload:
    """Unpickling it creates the marker file (an attacker's would run a shell)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_a_planted_resume_checkpoint_is_refused_and_never_runs(smoke_overrides, tmp_path):
    cfg = load_config(smoke_overrides)
    tokens = run_tokenizer(cfg, run_data(cfg))
    # The key is predictable: anyone who can write to the store can put a last.ckpt there.
    planted = Path(cfg.cache.store) / "pretrain" / f"{pretrain_key(cfg, tokens.digest)}.partial" / "checkpoints" / "last.ckpt"
    planted.parent.mkdir(parents=True)
    marker = tmp_path / "payload-ran"
    torch.save({"global_step": 1, "state_dict": {}, "rng_state": Payload(marker)}, planted)

    with pytest.raises(CheckpointError) as err:
        run_pretrain(cfg, tokens)
    assert str(planted) in str(err.value) and "cache.refresh=pretrain" in str(err.value)
    assert not marker.exists()

    # The fix the message names works: the stage starts over and finishes.
    result = run_pretrain(load_config(smoke_overrides + ["cache.refresh=pretrain"]), tokens)
    assert Path(result.output_dir, "model", "model.safetensors").is_file() and not marker.exists()
