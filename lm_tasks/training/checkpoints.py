"""Checkpoints that survive crashes: written atomically, checked before they are resumed.

Lightning writes checkpoints through `AtomicCheckpointIO`: into a temporary file in
the same folder, flushed to disk, then renamed over the old one. A process killed
mid-write leaves the previous checkpoint intact, never a truncated file.

A checkpoint resumed from a (shared) cache store is not trusted: it is read with
`torch.load(weights_only=True)`, which builds tensors and plain values (dicts, lists,
tuples, str, numbers, None) and refuses anything else instead of running it. Everything
our checkpoints hold is of those kinds (Lightning's loop, callback, optimizer and
scheduler state, the hyperparameters, and `rng_state()`, which stores numpy's state as
plain values for that reason), so no type needs allowing.
"""

from __future__ import annotations

import os
import pickle
import random
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lm_tasks.artifacts import replace


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
            replace(tmp, path)  # then the folder is synced: the rename survives a power cut
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        if weights_only is False:  # Lightning passes None unless told; False would run the file's code
            raise CheckpointError(f"Refusing to load checkpoint {path} with weights_only=False: checkpoints "
                                  "are only ever loaded as tensors and plain values")
        return load_checkpoint(path, map_location)


class LastCheckpoint(Checkpoint):
    """`last.ckpt` every `every_n_steps` optimizer steps, for a crashed run to resume from.

    A step that a validation follows (every `val_every_n_steps`) is saved after that
    validation, once the best-checkpoint and early-stopping callbacks have taken its score
    (Lightning runs checkpoint callbacks last, in their order): Lightning resumes such a
    checkpoint after the validation. Saved before it, the resumed run would skip the
    validation, which Lightning then counts as done, and early stopping would drift.
    """

    def __init__(self, path: Path, every_n_steps: int, val_every_n_steps: int):
        self.path, self.every, self.val_every = Path(path), every_n_steps, val_every_n_steps
        self._due_after_validation = False
        self._last_step = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self._last_step = trainer.global_step  # restored on resume

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._last_step or step % self.every:  # no optimizer step yet (accumulating), or not due
            return
        self._last_step = step
        # A validation runs after this step at its interval, or when training is about to stop.
        if trainer.enable_validation and (step % self.val_every == 0 or trainer.should_stop):
            self._due_after_validation = True
        else:
            trainer.save_checkpoint(self.path)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._due_after_validation and not trainer.sanity_checking:
            self._due_after_validation = False
            trainer.save_checkpoint(self.path)


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """Load a Lightning checkpoint as tensors and plain values only, or raise a CheckpointError
    that names the file (a truncated file, or one holding other objects, which are never built)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"Checkpoint {path} holds objects other than tensors and plain values ({_refused(err)}); it was "
            "not loaded, since building them could run code. It may have been planted in the cache store, "
            "or written by an lm-tasks version from before checkpoints held only plain values. Delete it, or "
            "pass cache.refresh=pretrain (cache.refresh=finetune for a fine-tuning) to restart this stage from "
            "scratch."
        ) from None  # torch's message suggests weights_only=False, which must not be followed here
    except Exception as err:
        raise CheckpointError(
            f"Checkpoint {path} is truncated or corrupt ({type(err).__name__}: {err}). Delete it to "
            "restart this stage from scratch, or pass cache.refresh=pretrain (cache.refresh=finetune for a "
            "fine-tuning)."
        ) from err


def submodule_state(state_dict: dict, name: str) -> dict:
    """One submodule's entries of a LightningModule's state dict ("model.wte.weight" -> "wte.weight")."""
    prefix = name + "."
    return {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}


def _refused(err: pickle.UnpicklingError) -> str:
    """What the weights-only unpickler refused ('Unsupported global: GLOBAL posix.system was not an
    allowed global by default'), without torch's advice to load or allow it anyway."""
    text = str(err).split("WeightsUnpickler error:", 1)[-1]
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return first.split(". ", 1)[0].rstrip(".") or "not a weights-only pickle"


def rng_state() -> dict:
    """Every random generator a training step draws from (dropout, sampling), for checkpoints:
    tensors and plain values only, so that `load_checkpoint` can read it back."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    numpy_state = [name, keys.tolist(), pos, has_gauss, cached_gaussian]  # keys: a uint32 ndarray
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RestoresRNG(L.LightningModule):
    """A LightningModule whose checkpoints carry `rng_state()`: a resumed run draws the same
    dropout masks as the uninterrupted one (pretraining and fine-tuning modules)."""

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rng_state"] = rng_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "rng_state" in checkpoint:
            set_rng_state(checkpoint["rng_state"])


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
