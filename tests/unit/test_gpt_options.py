"""The GPT's architecture options (rotary positions, RMSNorm, SwiGLU, ReLU^2, QK-norm, logit
soft-capping), each alone and combined: shapes, causality, the KV cache, beam search, the heads'
hidden states, the exported folder, the Hugging Face export's refusal, FLOPs, training, config
errors. The defaults' own tests (test_gpt.py, test_hf_interop.py) pin the textbook model."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lm_tasks.config import ConfigError, load_config
from lm_tasks.models.gpt import GPT, GPTConfig, KVCache, apply_rotary, rotary_tables, swiglu_hidden
from lm_tasks.models.hf import export_hf, exports_to_hf
from lm_tasks.models.io import load_pretrained, save_pretrained
from lm_tasks.tasks.classification import ClassificationAdapter
from lm_tasks.training.module import CausalLMModule

VOCAB = 61
MODERN = {"pos_encoding": "rotary", "norm": "rmsnorm", "activation": "swiglu", "qk_norm": True}
OPTIONS = {
    "rotary": {"pos_encoding": "rotary"},
    "rmsnorm": {"norm": "rmsnorm"},
    "swiglu": {"activation": "swiglu"},
    "relu2": {"activation": "relu2"},
    "qk_norm": {"qk_norm": True},
    "softcap": {"logit_softcap": 3.0},
    "modern": MODERN,
    "modern+softcap+bias": {**MODERN, "logit_softcap": 3.0, "bias": True},
    "sinusoidal+everything else": {**MODERN, "pos_encoding": "sinusoidal", "activation": "relu2",
                                   "logit_softcap": 3.0},
}
params = pytest.mark.parametrize("options", list(OPTIONS.values()), ids=list(OPTIONS))


def randomize(model: torch.nn.Module, std: float = 0.3) -> torch.nn.Module:
    """Weights far from their initial values (norm gains too), so nothing hides behind an identity."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            gain = p.dim() == 1 and name.endswith(".weight")  # a norm's: around 1
            p.normal_(1.0 if gain else 0.0, std)
    return model


def tiny(block_size: int = 16, **options) -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=VOCAB, block_size=block_size, n_layer=2, n_head=2, n_embd=32, **options)
    return randomize(GPT(cfg)).eval()


def tokenizer_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokenizer.json"
    path.write_text("{}")  # the folder format copies it; these tests never tokenise
    return path


# --- the forward pass --------------------------------------------------------------------------


@params
def test_shapes_loss_and_hidden_states(options):
    model = tiny(**options)
    idx = torch.randint(0, VOCAB, (3, 16))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 16, VOCAB) and loss.shape == () and torch.isfinite(loss)
    assert model.hidden_states(idx).shape == (3, 16, model.hidden_size)


@pytest.mark.parametrize("options", [{}, {"pos_encoding": "sinusoidal"}, *OPTIONS.values()],
                         ids=["learned", "sinusoidal", *OPTIONS])
def test_future_tokens_never_change_past_logits(options):
    model = tiny(**options)
    idx = torch.randint(0, VOCAB, (1, 16))
    base, _ = model(idx)
    for t in range(15):
        changed = idx.clone()
        changed[0, t + 1:] = (changed[0, t + 1:] + 1) % VOCAB
        logits, _ = model(changed)
        assert torch.allclose(logits[0, : t + 1], base[0, : t + 1], atol=1e-5), f"position {t} saw the future"
        assert not torch.allclose(logits[0, t + 1], base[0, t + 1])


def test_the_defaults_are_the_textbook_model():
    """No new module, buffer or parameter unless an option asks: default models (and so their
    initialisation, checkpoints and exports) are those built before the options existed."""
    model = tiny()
    assert {type(m) for m in model.modules()} >= {torch.nn.LayerNorm}
    assert not any(isinstance(m, torch.nn.RMSNorm) for m in model.modules())
    block = [name.removeprefix("blocks.0.") for name in model.state_dict() if name.startswith("blocks.0.")]
    assert block == ["ln_1.weight", "attn.qkv.weight", "attn.proj.weight", "ln_2.weight", "mlp.fc.weight",
                     "mlp.proj.weight"]
    assert model.blocks[0].mlp.fc.out_features == 4 * 32 and not hasattr(model, "rope_cos")


def test_rmsnorm_replaces_every_norm_and_qk_norm_adds_one_gain_per_head_channel():
    model = tiny(norm="rmsnorm", qk_norm=True)
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
    assert isinstance(model.ln_f, torch.nn.RMSNorm) and isinstance(model.blocks[1].ln_2, torch.nn.RMSNorm)
    assert model.blocks[0].attn.q_norm.weight.shape == (16,)  # head size 32 / 2


def test_relu2_and_swiglu_mlps_compute_their_formulas():
    x = torch.randn(2, 5, 32)
    relu2 = tiny(activation="relu2").blocks[0].mlp
    assert torch.allclose(relu2(x), relu2.proj(torch.relu(relu2.fc(x)) ** 2))
    swiglu = tiny(activation="swiglu").blocks[0].mlp
    h = swiglu_hidden(32)
    gate, up = swiglu.fc.weight[:h], swiglu.fc.weight[h:]
    expected = swiglu.proj(torch.nn.functional.silu(x @ gate.T) * (x @ up.T))
    assert torch.allclose(swiglu(x), expected, atol=1e-6)


def test_swiglu_hidden_size_keeps_the_parameters_of_the_4x_mlp():
    assert [swiglu_hidden(c) for c in (32, 128, 192, 768)] == [64, 320, 512, 2048]
    for c in (128, 192, 768):
        assert abs(3 * c * swiglu_hidden(c) - 8 * c * c) / (8 * c * c) < 0.1


def test_logit_softcap_bounds_the_logits_in_training_and_generation():
    capped, plain = tiny(logit_softcap=3.0), tiny()
    randomize(capped, std=1.0), randomize(plain, std=1.0)
    idx = torch.randint(0, VOCAB, (2, 16))
    raw, _ = plain(idx)
    assert raw.abs().max() > 6  # large enough for the cap to matter
    logits, loss = capped(idx, idx)
    assert torch.allclose(logits, 3.0 * torch.tanh(raw / 3.0), atol=1e-5) and logits.abs().max() <= 3.0
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(logits.view(-1, VOCAB), idx.view(-1)))
    assert torch.allclose(capped._next_logits(idx, capped.new_cache(), first=True), logits[:, -1], atol=1e-5)
    assert torch.allclose(capped._next_logits(idx, None, first=True), logits[:, -1], atol=1e-5)


# --- rotary positions ---------------------------------------------------------------------------


def test_rotary_scores_depend_only_on_the_distance_between_positions():
    cos, sin = rotary_tables(32, 8)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(m: int, n: int) -> float:
        qm = apply_rotary(q, cos[m:m + 1], sin[m:m + 1])
        kn = apply_rotary(k, cos[n:n + 1], sin[n:n + 1])
        return (qm * kn).sum().item()

    assert score(5, 2) == pytest.approx(score(20, 17), abs=1e-5)
    assert score(5, 2) != pytest.approx(score(5, 3), abs=1e-3)
    assert torch.allclose(apply_rotary(q, cos[:1], sin[:1]), q)  # position 0 is not rotated
    assert torch.allclose(apply_rotary(q, cos[9:10], sin[9:10]).norm(), q.norm())  # a rotation


def test_rotary_is_the_only_position_signal_and_adds_no_parameters():
    rotary, learned = tiny(pos_encoding="rotary"), tiny()
    assert not any("wpe" in name for name in rotary.state_dict())
    assert "rope_cos" not in rotary.state_dict()  # recomputed, not stored
    assert rotary.num_parameters() == learned.num_parameters()  # excluding the learned table
    # Without the rotation, attention over a set of tokens would not see their order: it does.
    idx = torch.tensor([[3, 9, 4, 1, 5]])
    swapped = torch.tensor([[9, 3, 4, 1, 5]])
    assert not torch.allclose(rotary(idx)[0][0, -1], rotary(swapped)[0][0, -1], atol=1e-4)


def test_rotary_positions_continue_after_the_cached_length():
    model = tiny(pos_encoding="rotary", qk_norm=True)
    idx = torch.randint(0, VOCAB, (2, 12))
    full, _ = model(idx)
    cache = KVCache(model.config.n_layer, model.config.block_size)
    prefix, _ = model(idx[:, :5], cache=cache)
    steps = [model(idx[:, t:t + 1], cache=cache)[0] for t in range(5, 12)]
    assert cache.length == 12
    assert torch.allclose(torch.cat([prefix, *steps], dim=1), full, atol=1e-5)
    # The same token fed at position 0 (a fresh cache) is not what it is at position 5.
    alone, _ = model(idx[:, 5:6], cache=KVCache(model.config.n_layer, model.config.block_size))
    assert not torch.allclose(alone[:, 0], full[:, 5], atol=1e-4)


def test_rotary_needs_an_even_head_size():
    with pytest.raises(ValueError, match="even head size"):
        GPTConfig(vocab_size=VOCAB, n_head=4, n_embd=12, pos_encoding="rotary")


# --- generation ----------------------------------------------------------------------------------


@params
def test_kv_cache_generation_equals_full_recomputation(options):
    model = tiny(**options)
    idx = torch.randint(0, VOCAB, (2, 10))
    full, _ = model(idx)
    cache = model.new_cache()
    prefix, _ = model(idx[:, :4], cache=cache)
    steps = [model(idx[:, t:t + 1], cache=cache)[0] for t in range(4, 10)]
    assert torch.allclose(torch.cat([prefix, *steps], dim=1), full, atol=1e-5)
    prompt = idx[:, :5]
    # 25 new tokens run past block_size (16): the cached path crops exactly as the uncached one.
    for kwargs in ({"temperature": 0}, {"temperature": 1.0, "top_k": 20, "top_p": 0.9}):
        cached = model.generate(prompt, 25, generator=torch.Generator().manual_seed(0), **kwargs)
        uncached = model.generate(prompt, 25, use_cache=False, generator=torch.Generator().manual_seed(0),
                                  **kwargs)
        assert torch.equal(cached, uncached)


@params
def test_beam_search_follows_its_beams_through_the_cache(options):
    model = tiny(**options)
    prompts = torch.randint(0, VOCAB, (3, 4), generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.beam_search(prompts[:1], 8, num_beams=1), model.generate(prompts[:1], 8, temperature=0))
    out = model.generate(prompts, 6, num_beams=3)
    for row, prompt in zip(out, prompts):
        assert torch.equal(row, model.generate(prompt[None], 6, num_beams=3)[0])


# --- fine-tuning heads ---------------------------------------------------------------------------


@params
def test_a_classification_head_reads_the_hidden_states_and_trains_the_backbone(options):
    model = tiny(**options, pad_id=0).train()
    adapter = ClassificationAdapter(["neg", "pos"], pooling="last", max_length=16, pad_id=0)
    head = adapter.build_head(model)
    batch = adapter.collate([{"input_ids": [5, 6, 7], "label": 1}, {"input_ids": [8], "label": 0}])
    adapter.loss(model, head, batch).backward()
    assert all(p.grad is not None for p in model.parameters())


# --- the exported folder and Hugging Face ------------------------------------------------------


@params
def test_the_exported_folder_round_trips_the_options(tmp_path, options):
    model = tiny(**options)
    out = save_pretrained(model, tmp_path / "model", tokenizer_file(tmp_path))
    written = json.loads((out / "config.json").read_text())
    assert {k: written[k] for k in options} == options
    loaded = load_pretrained(out)
    assert loaded.config == model.config
    idx = torch.randint(0, VOCAB, (2, 16))
    assert torch.equal(loaded(idx)[0], model(idx)[0])


def test_a_folder_written_before_the_options_loads_with_the_defaults(tmp_path):
    model = tiny()
    out = save_pretrained(model, tmp_path / "model", tokenizer_file(tmp_path))
    config = json.loads((out / "config.json").read_text())
    old = {k: v for k, v in config.items() if k not in ("norm", "qk_norm", "logit_softcap")}
    (out / "config.json").write_text(json.dumps(old))
    loaded = load_pretrained(out)
    assert (loaded.config.norm, loaded.config.qk_norm, loaded.config.logit_softcap) == ("layernorm", False, None)
    assert loaded.config == model.config
    idx = torch.randint(0, VOCAB, (2, 16))
    assert torch.equal(loaded(idx)[0], model(idx)[0])


@pytest.mark.parametrize("options,named", [
    ({"pos_encoding": "rotary"}, "pos_encoding=rotary has no GPT-2 equivalent; the model stays in this project's"),
    ({"norm": "rmsnorm"}, "norm=rmsnorm has no GPT-2 equivalent"),
    ({"activation": "swiglu"}, "activation=swiglu has no GPT-2 equivalent"),
    ({"qk_norm": True}, "qk_norm=true has no GPT-2 equivalent"),
    ({"logit_softcap": 3.0}, "logit_softcap=3.0 has no GPT-2 equivalent"),
    (MODERN, "pos_encoding=rotary and norm=rmsnorm and activation=swiglu and qk_norm=true have no GPT-2"),
])
def test_hugging_face_export_is_refused_naming_the_option(tmp_path, caplog, options, named):
    out = save_pretrained(tiny(**options), tmp_path / "model", tokenizer_file(tmp_path))
    with pytest.raises(ValueError, match=named):
        export_hf(out, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    with caplog.at_level(logging.INFO, logger="lm_tasks.models.hf"):
        assert exports_to_hf(out) is False  # the stages skip the hf/ artifact ...
    assert named.split(";")[0] in caplog.text  # ... saying why


@pytest.mark.parametrize("options", [{}, {"pos_encoding": "sinusoidal"}, {"activation": "relu2"}],
                         ids=["learned", "sinusoidal", "relu2"])
def test_what_gpt2_expresses_still_exports(tmp_path, options):
    out = save_pretrained(tiny(**options), tmp_path / "model", tokenizer_file(tmp_path))
    assert exports_to_hf(out)  # exactness against transformers: test_hf_interop.py


# --- FLOPs ----------------------------------------------------------------------------------------


def test_flops_per_token_count_swiglus_third_matrix():
    def flops(**options):
        return GPT(GPTConfig(vocab_size=2048, block_size=128, n_layer=4, n_head=4, n_embd=128,
                             **options)).flops_per_token()

    c, layers = 128, 4
    attention = 12.0 * layers * c * 128
    embeddings_and_norms = 2048 * c + c + layers * 2 * c
    attn = 4 * c * c
    assert flops() == 6.0 * (embeddings_and_norms + layers * (attn + 8 * c * c)) + attention
    assert flops(activation="swiglu") == 6.0 * (embeddings_and_norms + layers * (attn + 3 * c * 320)) + attention
    assert flops(pos_encoding="rotary") == flops()  # no parameters, and the table is not counted anyway
    assert flops(activation="relu2") == flops()
    assert flops(qk_norm=True) == flops() + 6.0 * layers * 2 * (c // 4)  # two gains per layer


# --- training ------------------------------------------------------------------------------------


@params
def test_a_short_lightning_run_lowers_the_loss(tmp_path, options):
    torch.manual_seed(0)
    text = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
            "must be in want of a wife. ") * 12
    ids = torch.tensor(list(text.encode()), dtype=torch.long) % VOCAB
    blocks = ids[: (len(ids) - 1) // 17 * 17].view(-1, 17)
    data = DataLoader(TensorDataset(blocks[:, :-1], blocks[:, 1:]), batch_size=8, shuffle=True)
    model_config = dict(family="gpt", vocab_size=VOCAB, block_size=16, n_layer=2, n_head=2, n_embd=32, **options)
    optim = dict(name="adamw", lr=3e-3, min_lr=3e-4, weight_decay=0.1, betas=[0.9, 0.95], eps=1e-8,
                 warmup_steps=5, fused=None)
    module = CausalLMModule(model_config, optim, total_steps=40, bytes_per_token=1.0)
    x, y = blocks[:16, :-1], blocks[:16, 1:]
    with torch.no_grad():
        before = module.model(x, y)[1].item()
    trainer = L.Trainer(max_steps=40, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=tmp_path)
    trainer.fit(module, data)
    module.model.eval()
    with torch.no_grad():
        after = module.model(x, y)[1].item()
    assert before > math.log(VOCAB) - 0.5 and after < before - 1.0, (before, after)


# --- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize("override,message", [
    ("model.norm=batchnorm", r"model.norm='batchnorm' is not one of layernorm, rmsnorm"),
    ("model.activation=swish", r"model.activation='swish' is not one of gelu, gelu_tanh, relu2, swiglu"),
    ("model.pos_encoding=alibi", r"model.pos_encoding='alibi' is not one of learned, sinusoidal, rotary"),
    ("model.logit_softcap=0", r"model.logit_softcap must be a positive number or null"),
    ("model.qk_norm=maybe", r"qk_norm"),
])
def test_bad_option_values_name_the_valid_ones(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config([override])


def test_rotary_with_an_odd_head_size_is_a_config_error():
    with pytest.raises(ConfigError, match="rotary needs an even head size"):
        load_config(["model.pos_encoding=rotary", "model.n_embd=12", "model.n_head=4"])


def test_the_modern_preset_combines_the_options_at_the_tiny_size():
    modern, tiny_cfg = load_config(["model=modern"]).model, load_config(["model=tiny"]).model
    assert (modern.pos_encoding, modern.norm, modern.activation, modern.qk_norm, modern.logit_softcap) == (
        "rotary", "rmsnorm", "swiglu", True, None)
    assert (modern.n_layer, modern.n_head, modern.n_embd, modern.block_size) == (
        tiny_cfg.n_layer, tiny_cfg.n_head, tiny_cfg.n_embd, tiny_cfg.block_size)
    assert (tiny_cfg.pos_encoding, tiny_cfg.norm, tiny_cfg.activation, tiny_cfg.qk_norm) == (
        "learned", "layernorm", "gelu", False)
