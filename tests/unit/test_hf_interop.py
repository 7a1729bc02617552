"""Hugging Face GPT-2 <-> our GPT: same logits both ways, tokenizers intact, clear errors.

Everything is built locally (tiny random models, a tokenizer trained on a few
sentences): nothing is downloaded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

transformers = pytest.importorskip("transformers")

from lm_tasks.models.gpt import GPT, GPTConfig  # noqa: E402
from lm_tasks.models.hf import export_hf, load_gpt2  # noqa: E402
from lm_tasks.models.io import load_pretrained, save_pretrained  # noqa: E402

EOS = "<|endoftext|>"
TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "A language model predicts the next token from the ones before it.",
    "Hello world, hello tokenizer; byte-level BPE never meets an unknown byte.",
] * 4
SENTENCE = "The lazy fox predicts hello world!"


def train_bpe(specials: list[str]) -> Tokenizer:
    """A tiny byte-level BPE like GPT-2's (256 byte symbols + merges + specials)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TEXT, trainer=trainer)
    return tok


def randomize(model: torch.nn.Module) -> None:
    """Random values everywhere (biases and LayerNorm gains too), so no mapping mistake hides."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)


def hf_gpt2(tok: Tokenizer, activation: str = "gelu_new", **kw) -> transformers.GPT2LMHeadModel:
    torch.manual_seed(0)
    eos = tok.token_to_id(EOS)
    cfg = transformers.GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=64, n_embd=32, n_layer=2,
                                  n_head=4, activation_function=activation, bos_token_id=eos,
                                  eos_token_id=eos, **kw)
    model = transformers.GPT2LMHeadModel(cfg)
    randomize(model)
    return model.eval()


def save_hf_checkpoint(model: transformers.GPT2LMHeadModel, tok: Tokenizer, path: Path) -> Path:
    model.save_pretrained(path)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS).save_pretrained(path)
    return path


def assert_same_logits(ours: GPT, hf_model: torch.nn.Module, vocab_size: int) -> None:
    torch.manual_seed(2)
    idx = torch.randint(0, vocab_size, (2, 24))
    with torch.no_grad():
        expected = hf_model(idx).logits
        got, _ = ours(idx)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()


@pytest.mark.parametrize("hf_activation,ours", [("gelu_new", "gelu_tanh"), ("gelu_pytorch_tanh", "gelu_tanh"),
                                                 ("gelu", "gelu"), ("relu2", "relu2")])
def test_load_gpt2_gives_the_same_logits(tmp_path, hf_activation, ours):
    tok = train_bpe([EOS])
    hf_model = hf_gpt2(tok, hf_activation)
    source = save_hf_checkpoint(hf_model, tok, tmp_path / "hf")

    out = load_gpt2(source, tmp_path / "ours")
    model = load_pretrained(out)
    cfg = model.config
    assert (cfg.activation, cfg.bias, cfg.pos_encoding, cfg.block_size) == (ours, True, "learned", 64)
    assert cfg.eos_id == cfg.pad_id == tok.token_to_id(EOS)  # GPT-2 has no pad token: eos pads
    assert (out / "tokenizer.json").read_text() == (source / "tokenizer.json").read_text()
    assert_same_logits(model, hf_model, tok.get_vocab_size())


def test_load_gpt2_from_pytorch_bin_and_vocab_merges(tmp_path):
    """The original GPT-2 layout: pytorch_model.bin without the `transformer.` prefix, vocab.json + merges.txt."""
    tok = train_bpe([EOS])
    hf_model = hf_gpt2(tok)
    source = tmp_path / "hf"
    source.mkdir()
    hf_model.config.save_pretrained(source)
    weights = {k.removeprefix("transformer."): v for k, v in hf_model.state_dict().items()
               if k != "lm_head.weight"}
    torch.save(weights, source / "pytorch_model.bin")
    spec = json.loads(tok.to_str())
    (source / "vocab.json").write_text(json.dumps(spec["model"]["vocab"]))
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    (source / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")

    model = load_pretrained(load_gpt2(source, tmp_path / "ours"))
    converted = Tokenizer.from_file(str(tmp_path / "ours" / "tokenizer.json"))
    assert converted.encode(SENTENCE).ids == tok.encode(SENTENCE).ids
    assert model.config.eos_id == model.config.pad_id == tok.token_to_id(EOS)
    assert_same_logits(model, hf_model, tok.get_vocab_size())


def our_model(tmp_path: Path, pos_encoding: str, activation: str) -> tuple[Path, Tokenizer]:
    tok = train_bpe([EOS, "<pad>"])
    tok_path = tmp_path / "tokenizer.json"
    tok.save(str(tok_path))
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tok.get_vocab_size(), block_size=32, n_layer=2, n_head=4, n_embd=32,
                    bias=False, pos_encoding=pos_encoding, activation=activation,
                    eos_id=tok.token_to_id(EOS), pad_id=tok.token_to_id("<pad>"))
    model = GPT(cfg)
    randomize(model)
    return save_pretrained(model, tmp_path / "ours", tok_path), tok


@pytest.mark.parametrize("pos_encoding,activation", [("learned", "gelu"), ("sinusoidal", "gelu_tanh"),
                                                     ("learned", "relu2")])
def test_export_hf_loads_in_transformers_with_the_same_logits(tmp_path, pos_encoding, activation):
    model_dir, tok = our_model(tmp_path, pos_encoding, activation)
    ours = load_pretrained(model_dir)

    out = export_hf(model_dir, tmp_path / "hf")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert hf_model.config.activation_function == {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu2": "relu2"}[activation]
    assert_same_logits(ours, hf_model, tok.get_vocab_size())

    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert isinstance(hf_tok, transformers.PreTrainedTokenizerFast)
    assert hf_tok(SENTENCE)["input_ids"] == tok.encode(SENTENCE).ids
    assert (hf_tok.eos_token, hf_tok.eos_token_id) == (EOS, ours.config.eos_id)
    assert (hf_tok.pad_token, hf_tok.pad_token_id) == ("<pad>", ours.config.pad_id)
    assert hf_tok.decode(tok.encode(SENTENCE).ids) == SENTENCE


def test_export_then_load_round_trip(tmp_path):
    """ours (no biases, gelu) -> GPT-2 folder -> ours again (zero biases): same function and ids."""
    model_dir, tok = our_model(tmp_path, "learned", "gelu")
    back = load_pretrained(load_gpt2(export_hf(model_dir, tmp_path / "hf"), tmp_path / "back"))
    original = load_pretrained(model_dir)
    assert (back.config.eos_id, back.config.pad_id) == (original.config.eos_id, original.config.pad_id)
    idx = torch.randint(0, tok.get_vocab_size(), (2, 16))
    with torch.no_grad():
        assert torch.allclose(back(idx)[0], original(idx)[0], atol=1e-4)


@pytest.mark.parametrize("option,named", [
    ({"pos_encoding": "rotary"}, "pos_encoding=rotary has no GPT-2 equivalent; the model stays in this project's"),
    ({"norm": "rmsnorm", "activation": "swiglu"}, "norm=rmsnorm and activation=swiglu have no GPT-2 equivalent"),
    ({"qk_norm": True}, "qk_norm=true has no GPT-2 equivalent"),
    ({"logit_softcap": 30.0}, "logit_softcap=30.0 has no GPT-2 equivalent"),
])
def test_export_hf_refuses_options_gpt2_cannot_express(tmp_path, option, named):
    """Exported anyway, these would load in transformers as a different function: refused instead."""
    model_dir, _ = our_model(tmp_path, "learned", "gelu")
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, **option}))
    with pytest.raises(ValueError, match=named):
        export_hf(model_dir, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_load_gpt2_refuses_other_model_types(tmp_path):
    source = tmp_path / "llama"
    source.mkdir()
    (source / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 32}))
    with pytest.raises(ValueError, match="'llama'"):
        load_gpt2(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_load_gpt2_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="No folder at .*missing.*Hub id"):
        load_gpt2(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_gpt2(tmp_path, tmp_path / "out")


def test_load_gpt2_unreachable_hub_id_is_a_clear_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.chdir(tmp_path)  # so the id is not found as a local folder either
    monkeypatch.setattr(transformers.PretrainedConfig, "get_config_dict", offline)
    with pytest.raises(FileNotFoundError, match="'someone/gpt2-tiny' is neither a local folder nor a Hub model"):
        load_gpt2("someone/gpt2-tiny", tmp_path / "out")


@pytest.mark.parametrize("activation,extra,message", [
    ("relu", {}, "activation_function 'relu'"),
    ("gelu_new", {"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon"),
    ("gelu_new", {"n_inner": 48}, "n_inner"),
])
def test_load_gpt2_refuses_configs_our_model_cannot_express(tmp_path, activation, extra, message):
    tok = train_bpe([EOS])
    source = save_hf_checkpoint(hf_gpt2(tok, activation, **extra), tok, tmp_path / "hf")
    with pytest.raises(ValueError, match=message):
        load_gpt2(source, tmp_path / "out")


def test_load_gpt2_without_transformers_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(ImportError, match=r"lm-tasks\[hf\]"):
        load_gpt2(tmp_path, tmp_path / "out")


def test_activation_is_validated_and_defaults_for_old_configs(tmp_path):
    with pytest.raises(ValueError, match="activation"):
        GPT(GPTConfig(vocab_size=10, activation="relu"))
    model_dir, _ = our_model(tmp_path, "learned", "gelu")
    config = json.loads((model_dir / "config.json").read_text())
    del config["activation"]  # a model exported before the field existed
    (model_dir / "config.json").write_text(json.dumps(config))
    assert load_pretrained(model_dir).config.activation == "gelu"
