"""The one exported model format: a folder other tools can read.

    config.json         GPTConfig (vocabulary size and special-token ids included)
    model.safetensors   weights (the tied output head stored once)
    tokenizer.json      the tokenizer the model was trained with
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors.torch import load_model, save_model

from lm_tasks.artifacts import atomic_path
from lm_tasks.models.gpt import GPT, GPTConfig

FILES = ("config.json", "model.safetensors", "tokenizer.json")


def save_pretrained(model: GPT, out_dir: str | Path, tokenizer_path: str | Path) -> Path:
    out_dir = Path(out_dir)
    with atomic_path(out_dir, is_dir=True) as tmp:
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
        save_model(model, str(tmp / "model.safetensors"))
        shutil.copyfile(tokenizer_path, tmp / "tokenizer.json")
    return out_dir


def load_pretrained(model_dir: str | Path, device: str = "cpu") -> GPT:
    model_dir = Path(model_dir)
    missing = [f for f in FILES if not (model_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{model_dir} is not an exported model: missing {', '.join(missing)}. "
            "Run the pretraining stage (python -m flows.pretrain) or point at its model/ folder."
        )
    cfg = GPTConfig(**json.loads((model_dir / "config.json").read_text()))
    model = GPT(cfg)
    try:
        load_model(model, str(model_dir / "model.safetensors"), device=device)
    except Exception as err:
        raise RuntimeError(f"Could not load weights from {model_dir / 'model.safetensors'}: {err}") from err
    return model.to(device).eval()
