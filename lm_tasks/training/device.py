"""Where single-process work runs: the torch device that `trainer.accelerator` points at.

Training goes through Lightning, which places the model itself. Evaluation, generation and
beam search run in one process outside a Trainer; they use this device, so they run where
training runs. With several devices (`trainer.devices`: a count, a list of ids, "0,2", -1 or
"auto") that is the first one Lightning would use.
"""

from __future__ import annotations

import torch

from lm_tasks.config import ConfigError


def compute_device(accelerator: str, devices=1) -> torch.device:
    """cpu -> cpu; cuda -> cuda:<first device>; mps -> mps; gpu -> MPS where there is one, else
    CUDA (Lightning's order); auto -> CUDA, else MPS, else the CPU."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if accelerator == "gpu":
        accelerator = "mps" if mps else "cuda"
    elif accelerator == "auto":
        accelerator = "cuda" if cuda else "mps" if mps else "cpu"
    if accelerator == "cpu":
        return torch.device("cpu")
    if accelerator == "cuda":
        if not cuda:
            raise ConfigError("trainer.accelerator asks for CUDA, which is not available on this machine "
                              "(torch.cuda.is_available() is False); use trainer=cpu, or a CUDA build of "
                              "PyTorch on a machine with a GPU")
        index = _first_index(devices)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"trainer.devices={devices} names CUDA device {index}, but this machine has "
                              f"{torch.cuda.device_count()}")
        return torch.device("cuda", index)
    if accelerator == "mps":
        if not mps:
            raise ConfigError("trainer.accelerator=mps, but MPS is not available on this machine; use trainer=cpu")
        return torch.device("mps")
    raise ConfigError(f"trainer.accelerator={accelerator!r}: evaluation and generation run on cpu, gpu, cuda, "
                      "mps or auto")


def _first_index(devices) -> int:
    """The first device id Lightning picks: a count (or -1, "auto") starts at 0; ids are listed."""
    if isinstance(devices, (list, tuple)):
        return int(devices[0]) if devices else 0
    if isinstance(devices, str) and "," in devices:  # "1,3": ids, as Lightning parses them
        return int(next(part for part in devices.split(",") if part.strip()))
    return 0
