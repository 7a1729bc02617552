"""Checkpoints that survive crashes: written atomically, checked before they are resumed.

Lightning writes checkpoints through `AtomicCheckpointIO`: into a temporary file in
the same folder, flushed to disk, then renamed over the old one. A process killed
mid-write leaves the previous checkpoint intact, never a truncated file.
"""

from __future__ import annotations

import os
import random
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be loaded."""


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        return load_checkpoint(path, map_location)


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """Load a Lightning checkpoint, or raise a CheckpointError that names the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist")
    try:
        # Our own checkpoints hold optimizer and RNG state (not only tensors).
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:
        raise CheckpointError(
            f"Checkpoint {path} is truncated or corrupt ({type(err).__name__}: {err}). Delete it to "
            "restart this stage from scratch, or pass cache.refresh=pretrain."
        ) from err


def rng_state() -> dict:
    """Every random generator a training step draws from (dropout, sampling), for checkpoints."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def sigterm_between_steps() -> Iterator[None]:
    """Let SIGTERM stop training at a step boundary, not at an arbitrary instruction.

    Lightning's own SIGTERM handler only sets a flag that ends `fit` after the current
    step, but it also calls the handler it finds installed, and Prefect's raises at once,
    possibly inside an MLflow write that then leaves the store locked. Around `fit`
    there is no other handler, so Lightning's flag is all that runs.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
