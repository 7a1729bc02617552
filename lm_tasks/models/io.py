"""The one exported model format, for every model family: a folder other tools can read.

    config.json         the family's config ("family": gpt | rnn | lstm | gru | ngram; vocabulary
                        size and special-token ids included)
    model.safetensors   weights (a tied output head stored once), or the n-gram tables
    tokenizer.json      the tokenizer the model was trained with
"""

from __future__ import annotations

import json
import shutil
from dataclasses import fields
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_model

from lm_tasks.artifacts import atomic_path
from lm_tasks.models.base import CausalLM
from lm_tasks.models.gpt import GPT, GPTConfig
from lm_tasks.models.ngram import NGramConfig, NGramLM
from lm_tasks.models.recurrent import RecurrentConfig, RecurrentLM

FILES = ("config.json", "model.safetensors", "tokenizer.json")

# family -> (model class, config class)
FAMILIES = {
    "gpt": (GPT, GPTConfig),
    "rnn": (RecurrentLM, RecurrentConfig),
    "lstm": (RecurrentLM, RecurrentConfig),
    "gru": (RecurrentLM, RecurrentConfig),
    "ngram": (NGramLM, NGramConfig),
}


def build_config(family: str, **keys):
    """The family's config from the keys it reads; keys meant for other families are ignored
    (so one debug or experiment file can shrink any family)."""
    if family not in FAMILIES:
        raise ValueError(f"Unknown model family {family!r}; expected one of {', '.join(FAMILIES)}")
    config_class = FAMILIES[family][1]
    known = {f.name for f in fields(config_class)}
    return config_class(**{k: v for k, v in keys.items() if k in known and v is not None}, family=family)


def build_model(config) -> CausalLM:
    return FAMILIES[config.family][0](config)


def save_pretrained(model: CausalLM, out_dir: str | Path, tokenizer_path: str | Path) -> Path:
    out_dir = Path(out_dir)
    with atomic_path(out_dir, is_dir=True) as tmp:
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
        save_model(model, str(tmp / "model.safetensors"))
        shutil.copyfile(tokenizer_path, tmp / "tokenizer.json")
    return out_dir


def read_config(model_dir: str | Path):
    """The exported model's config object (folders written before families existed are GPTs)."""
    values = json.loads((Path(model_dir) / "config.json").read_text())
    family = values.pop("family", "gpt")
    if family == "gpt":  # written before sinusoidal positions were scaled: they were added unscaled
        values.setdefault("pos_scale", 1.0)
    return build_config(family, **values)


def load_pretrained(model_dir: str | Path, device: str | torch.device = "cpu") -> CausalLM:
    model_dir = Path(model_dir)
    missing = [f for f in FILES if not (model_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{model_dir} is not an exported model: missing {', '.join(missing)}. "
            "Run the pretraining stage (python -m flows.pretrain) or point at its model/ folder."
        )
    cfg = read_config(model_dir)
    weights = model_dir / "model.safetensors"
    try:
        if cfg.family == "ngram":  # the tables' sizes come from the data, so they build the model
            model = NGramLM(cfg, load_file(str(weights)))
        else:
            model = build_model(cfg)
            load_model(model, str(weights), device=str(device))  # safetensors takes a name, not a torch.device
    except Exception as err:
        raise RuntimeError(f"Could not load weights from {weights}: {err}") from err
    return model.to(device).eval()
