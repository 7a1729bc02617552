"""Interoperability with Hugging Face GPT-2 checkpoints, both ways.

GPT-2 is our architecture with biases, learned positions and the tanh GELU:
the same pre-norm blocks, fused q/k/v projection, final LayerNorm and tied
output head. Only the layout differs: GPT-2 stores its linear layers as
`Conv1D` with weights (in, out), where nn.Linear keeps (out, in).

Our default GPT, sinusoidal positions (written as a learned table) and the
gelu, gelu_tanh and relu2 MLPs map exactly. Rotary positions, RMSNorm, SwiGLU,
QK-norm and logit soft-capping have no GPT-2 equivalent: `export_hf` refuses
such a model, naming the options, and `exports_to_hf` says no (the stages then
skip the `hf/` artifact, with the reason in the log).

    load_gpt2(source, out_dir)     Hugging Face GPT-2 -> our exported folder
    export_hf(model_dir, out_dir)  our exported folder -> a folder that
                                   transformers' AutoModelForCausalLM and
                                   AutoTokenizer load

`transformers` is an optional dependency (pip install 'lm-tasks[hf]'), needed
only by load_gpt2; exporting writes plain JSON and safetensors.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from lm_tasks.artifacts import atomic_path
from lm_tasks.models.gpt import GPT, GPTConfig, position_table
from lm_tasks.models.io import FILES, read_config, save_pretrained

# GPT-2's `activation_function` -> ours. gelu_new and gelu_pytorch_tanh are the
# same tanh approximation (one in Python, one fused in PyTorch).
HF_TO_OUR_ACTIVATION = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                        "relu2": "relu2"}
OUR_TO_HF_ACTIVATION = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu2": "relu2"}
LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, which our model uses
GPT2_EOS = "<|endoftext|>"
log = logging.getLogger(__name__)
SOURCE_HINT = (
    "Pass a local folder of a Hugging Face GPT-2 checkpoint (config.json, model.safetensors or "
    "pytorch_model.bin, tokenizer files) or a Hub id such as 'openai-community/gpt2'."
)


def weight_names(n_layer: int) -> list[tuple[str, str, bool]]:
    """(our name, GPT-2 name inside `transformer.`, stored transposed by GPT-2's Conv1D)."""
    names = [("wte.weight", "wte.weight", False), ("wpe.weight", "wpe.weight", False)]
    for i in range(n_layer):
        ours, theirs = f"blocks.{i}.", f"h.{i}."
        for our_part, hf_part, conv in (
            ("ln_1", "ln_1", False), ("attn.qkv", "attn.c_attn", True), ("attn.proj", "attn.c_proj", True),
            ("ln_2", "ln_2", False), ("mlp.fc", "mlp.c_fc", True), ("mlp.proj", "mlp.c_proj", True),
        ):
            names.append((f"{ours}{our_part}.weight", f"{theirs}{hf_part}.weight", conv))
            names.append((f"{ours}{our_part}.bias", f"{theirs}{hf_part}.bias", False))
    names += [("ln_f.weight", "ln_f.weight", False), ("ln_f.bias", "ln_f.bias", False)]
    return names


# --- Hugging Face GPT-2 -> ours ---------------------------------------------------------------

def load_gpt2(source: str | Path, out_dir: str | Path) -> Path:
    """Convert a Hugging Face GPT-2 checkpoint (local folder or Hub id) into our exported format."""
    try:
        import transformers
    except ImportError as err:
        raise ImportError(
            "Loading Hugging Face checkpoints needs transformers: pip install 'lm-tasks[hf]'"
        ) from err

    raw = _read_hf_config(source, transformers)
    model_type = raw.get("model_type")
    if model_type != "gpt2":
        raise ValueError(
            f"{source} is a {model_type!r} checkpoint; only GPT-2 (model_type 'gpt2') can be converted "
            "to our GPT architecture."
        )
    try:
        hf_model = transformers.GPT2LMHeadModel.from_pretrained(str(source))
        hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(source))
    except (OSError, ValueError) as err:
        raise RuntimeError(f"Could not load the GPT-2 checkpoint {source}: {err}. {SOURCE_HINT}") from err

    hf_cfg = hf_model.config
    cfg = GPTConfig(
        vocab_size=hf_cfg.vocab_size, block_size=hf_cfg.n_positions, n_layer=hf_cfg.n_layer,
        n_head=hf_cfg.n_head, n_embd=hf_cfg.n_embd, dropout=0.0, bias=True, pos_encoding="learned",
        activation=_our_activation(hf_cfg, source),
    )
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer_path = Path(tmp) / "tokenizer.json"
        tokenizer = _write_gpt2_tokenizer(source, hf_tokenizer, tokenizer_path)
        if tokenizer.get_vocab_size() > cfg.vocab_size:
            raise ValueError(
                f"{source}: the tokenizer has {tokenizer.get_vocab_size()} tokens but the model only "
                f"{cfg.vocab_size} embeddings"
            )
        # The special tokens transformers declares (tokenizer_config.json, or GPT2Tokenizer's
        # default eos <|endoftext|>); GPT-2 has no padding token, so eos pads (loss masks it anyway).
        cfg.eos_id = hf_tokenizer.eos_token_id
        if cfg.eos_id is None:
            cfg.eos_id = tokenizer.token_to_id(GPT2_EOS)
        cfg.pad_id = hf_tokenizer.pad_token_id if hf_tokenizer.pad_token_id is not None else cfg.eos_id

        model = GPT(cfg)
        hf_weights = hf_model.transformer.state_dict()
        weights = {
            ours: (hf_weights[theirs].t() if conv else hf_weights[theirs]).float().contiguous()
            for ours, theirs, conv in weight_names(cfg.n_layer)
        }
        weights["lm_head.weight"] = weights["wte.weight"]  # tied: one tensor under both names
        model.load_state_dict(weights, strict=True)
        return save_pretrained(model, out_dir, tokenizer_path)


def _read_hf_config(source: str | Path, transformers: Any) -> dict:
    """The checkpoint's config.json as a dict, without assuming its model type."""
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{path} has no config.json, so it is not a Hugging Face checkpoint. {SOURCE_HINT}"
            )
        return json.loads((path / "config.json").read_text())
    if path.exists():
        raise FileNotFoundError(f"{path} is a file, not a checkpoint folder. {SOURCE_HINT}")
    if _looks_like_path(source):
        raise FileNotFoundError(f"No folder at {path}. {SOURCE_HINT}")
    try:  # a Hub id: the local Hugging Face cache, else the network
        config_dict, _ = transformers.PretrainedConfig.get_config_dict(str(source))
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"{source!r} is neither a local folder nor a Hub model that could be reached ({err}). {SOURCE_HINT}"
        ) from err
    return config_dict


def _looks_like_path(source: str | Path) -> bool:
    """Hub ids are 'name' or 'owner/name'; anything else was meant as a folder."""
    text = str(source)
    return (isinstance(source, Path) or text.startswith((".", "~", "/")) or text.count("/") > 1
            or "\\" in text)


def _our_activation(hf_cfg: Any, source: str | Path) -> str:
    """Check the config describes exactly our architecture; return our activation name."""
    activation = HF_TO_OUR_ACTIVATION.get(hf_cfg.activation_function)
    if activation is None:
        raise ValueError(
            f"{source}: activation_function {hf_cfg.activation_function!r} is not supported "
            f"(supported: {', '.join(HF_TO_OUR_ACTIVATION)})"
        )
    if abs(hf_cfg.layer_norm_epsilon - LAYER_NORM_EPS) > 1e-12:
        raise ValueError(
            f"{source}: layer_norm_epsilon is {hf_cfg.layer_norm_epsilon}; our model uses {LAYER_NORM_EPS}"
        )
    # Variants our blocks cannot express would convert silently into a different model.
    unsupported = {
        "n_inner": getattr(hf_cfg, "n_inner", None) not in (None, 4 * hf_cfg.n_embd),
        "scale_attn_weights": not getattr(hf_cfg, "scale_attn_weights", True),
        "scale_attn_by_inverse_layer_idx": getattr(hf_cfg, "scale_attn_by_inverse_layer_idx", False),
        "add_cross_attention": getattr(hf_cfg, "add_cross_attention", False),
        "tie_word_embeddings": not getattr(hf_cfg, "tie_word_embeddings", True),
    }
    bad = [name for name, is_bad in unsupported.items() if is_bad]
    if bad:
        raise ValueError(f"{source}: GPT-2 variant not supported by our model ({', '.join(bad)} differ)")
    return activation


def _write_gpt2_tokenizer(source: str | Path, hf_tokenizer: Any, path: Path) -> Tokenizer:
    """Copy the checkpoint's tokenizer.json byte for byte; else save the one transformers built
    (from vocab.json + merges.txt, or the Hub)."""
    file = Path(source).expanduser() / "tokenizer.json"
    if file.is_file():
        shutil.copyfile(file, path)
    elif hasattr(hf_tokenizer, "backend_tokenizer"):
        hf_tokenizer.backend_tokenizer.save(str(path))
    else:
        raise ValueError(f"{source}: no tokenizer.json and transformers built no fast tokenizer to convert")
    return Tokenizer.from_file(str(path))


# --- ours -> Hugging Face GPT-2 ---------------------------------------------------------------

def hf_refusal(cfg) -> str | None:
    """Why a model with this config cannot be written as GPT-2, or None when it maps exactly."""
    if cfg.family != "gpt":
        return f"a {cfg.family} model; only the GPT maps onto a Hugging Face architecture (GPT-2)"
    options = []
    if cfg.pos_encoding not in ("learned", "sinusoidal"):
        options.append(f"pos_encoding={cfg.pos_encoding}")
    if cfg.norm != "layernorm":
        options.append(f"norm={cfg.norm}")
    if cfg.activation not in OUR_TO_HF_ACTIVATION:
        options.append(f"activation={cfg.activation}")
    if cfg.qk_norm:
        options.append("qk_norm=true")
    if cfg.logit_softcap is not None:
        options.append(f"logit_softcap={cfg.logit_softcap}")
    if options:
        return (f"{' and '.join(options)} {'has' if len(options) == 1 else 'have'} no GPT-2 equivalent; "
                "the model stays in this project's format")
    return None


def exports_to_hf(model_dir: str | Path) -> bool:
    """Whether the exported model maps onto GPT-2 (the GPT family with GPT-2's options does); the
    reason it does not is logged."""
    reason = hf_refusal(read_config(model_dir))
    if reason is not None:
        log.info("No Hugging Face export of %s: %s", model_dir, reason)
    return reason is None


def export_hf(model_dir: str | Path, out_dir: str | Path) -> Path:
    """Write our exported model as a Hugging Face GPT-2 folder (config, weights, tokenizer)."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    missing = [f for f in FILES if not (model_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{model_dir} is not an exported model: missing {', '.join(missing)}")
    cfg = read_config(model_dir)
    reason = hf_refusal(cfg)
    if reason is not None:
        raise ValueError(f"{model_dir} is {reason}" if cfg.family != "gpt" else f"{model_dir}: {reason}")
    weights = _hf_weights(cfg, load_file(str(model_dir / "model.safetensors")))
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    specials = {
        role: tokenizer.id_to_token(token_id) if token_id is not None else None
        for role, token_id in (("eos_token", cfg.eos_id), ("pad_token", cfg.pad_id))
    }
    specials["bos_token"] = specials["eos_token"]  # GPT-2 starts and ends documents with the same token
    specials = {role: token for role, token in specials.items() if token is not None}

    with atomic_path(out_dir, is_dir=True) as tmp:
        tmp.mkdir(parents=True, exist_ok=True)
        _write_json(tmp / "config.json", _hf_config(cfg))
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        shutil.copyfile(model_dir / "tokenizer.json", tmp / "tokenizer.json")
        # PreTrainedTokenizerFast reads tokenizer.json verbatim; a GPT-2 class would rebuild the
        # pipeline and may differ from ours (which need not even be byte-level BPE).
        _write_json(tmp / "tokenizer_config.json", {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": cfg.block_size,
            "clean_up_tokenization_spaces": False,
            **specials,
        })
        _write_json(tmp / "special_tokens_map.json", specials)
    return out_dir


def _hf_weights(cfg: GPTConfig, ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict in GPT-2 naming and layout (float32; missing biases as zeros)."""
    # The tied head is stored once, under whichever name safetensors kept.
    ours = dict(ours)
    ours.setdefault("wte.weight", ours.get("lm_head.weight"))
    if cfg.pos_encoding == "sinusoidal":
        ours["wpe.weight"] = position_table(cfg)  # the fixed table as learned weights
    hf: dict[str, torch.Tensor] = {}
    for our_name, hf_name, conv in weight_names(cfg.n_layer):
        tensor = ours.get(our_name)
        if tensor is None:
            if not our_name.endswith(".bias"):
                raise KeyError(f"The model's weights have no {our_name}")
            # bias=False: GPT-2 always has biases, so zeros leave the function unchanged.
            tensor = torch.zeros(_bias_size(cfg, our_name))
        hf[f"transformer.{hf_name}"] = (tensor.t() if conv else tensor).float().contiguous()
    return hf  # lm_head.weight is left out: transformers ties it to transformer.wte.weight


def _bias_size(cfg: GPTConfig, name: str) -> int:
    if ".attn.qkv." in name:
        return 3 * cfg.n_embd
    if ".mlp.fc." in name:
        return 4 * cfg.n_embd
    return cfg.n_embd


def _hf_config(cfg: GPTConfig) -> dict:
    """A GPT2Config as JSON, written by hand so exporting does not need transformers."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": None,  # 4 * n_embd, as ours
        "activation_function": OUR_TO_HF_ACTIVATION[cfg.activation],
        "layer_norm_epsilon": LAYER_NORM_EPS,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "summary_first_dropout": 0.0,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "use_cache": True,
        "bos_token_id": cfg.eos_id,
        "eos_token_id": cfg.eos_id,
        "pad_token_id": cfg.pad_id,
        "tie_word_embeddings": True,
    }


def _write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2) + "\n")
