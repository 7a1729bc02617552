"""The recurrent and n-gram families: the same interface as the GPT, their own maths checked."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import pytest
import torch

from lm_tasks.config import ConfigError, load_config
from lm_tasks.models.hf import export_hf
from lm_tasks.models.io import build_config, build_model, load_pretrained, save_pretrained
from lm_tasks.models.ngram import NGramConfig, NGramLM
from lm_tasks.models.recurrent import RecurrentConfig, RecurrentLM

CONF_MODELS = sorted(p.stem for p in (Path(__file__).parents[2] / "conf" / "model").glob("*.yaml"))
CELLS = ["rnn", "lstm", "gru"]
VOCAB = 23


def recurrent(family: str, **kw) -> RecurrentLM:
    torch.manual_seed(0)
    return RecurrentLM(RecurrentConfig(vocab_size=VOCAB, family=family, n_layer=2, n_embd=16, **kw)).eval()


def tokenizer_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokenizer.json"
    path.write_text("{}")  # the folder format copies it; these tests never tokenise
    return path


# --- recurrent models ---------------------------------------------------------------------


@pytest.mark.parametrize("family", CELLS)
def test_recurrent_shapes_loss_and_tied_head(family):
    model = recurrent(family)
    idx = torch.randint(0, VOCAB, (3, 12))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 12, VOCAB) and model.hidden_states(idx).shape == (3, 12, 16)
    assert loss.item() == pytest.approx(torch.log(torch.tensor(float(VOCAB))).item(), abs=0.2)  # ~uniform
    assert model.lm_head.weight is model.wte.weight
    untied = recurrent(family, hidden_size=24)
    assert untied.lm_head.weight is not untied.wte.weight and untied.hidden_size == 24
    assert untied.hidden_states(idx).shape == (3, 12, 24)


@pytest.mark.parametrize("family", CELLS)
def test_recurrent_future_tokens_never_change_past_states(family):
    model = recurrent(family)
    idx = torch.randint(0, VOCAB, (1, 10))
    changed = idx.clone()
    changed[0, 6:] = (changed[0, 6:] + 1) % VOCAB
    assert torch.equal(model.hidden_states(idx)[:, :6], model.hidden_states(changed)[:, :6])
    assert not torch.allclose(model.hidden_states(idx)[:, 6:], model.hidden_states(changed)[:, 6:])


@pytest.mark.parametrize("family", CELLS)
def test_recurrent_state_decoding_equals_full_recompute(family):
    model = recurrent(family)
    prompt = torch.randint(0, VOCAB, (2, 5))
    for kwargs in ({"temperature": 0}, {"temperature": 1.0, "top_k": 10, "top_p": 0.9}):
        cached = model.generate(prompt, 25, generator=torch.Generator().manual_seed(0), **kwargs)
        full = model.generate(prompt, 25, use_cache=False, generator=torch.Generator().manual_seed(0), **kwargs)
        assert cached.shape == (2, 30) and torch.equal(cached, full)


@pytest.mark.parametrize("family", CELLS)
def test_recurrent_beam_search(family):
    model = recurrent(family)
    prompt = torch.tensor([[3, 1, 4]])
    assert torch.equal(model.beam_search(prompt, 8, num_beams=1), model.generate(prompt, 8, temperature=0))

    torch.manual_seed(1)
    small = RecurrentLM(RecurrentConfig(vocab_size=5, family=family, n_layer=1, n_embd=8)).eval()

    def log_prob(tokens):
        logits, _ = small(torch.tensor([[0, 1, *tokens]]))
        log_probs = torch.log_softmax(logits[0, 1:-1], dim=-1)
        return sum(log_probs[i, t].item() for i, t in enumerate(tokens))

    best = max(itertools.product(range(5), repeat=3), key=log_prob)
    # 25 beams keep every 2-token prefix: the recurrent state must follow each surviving beam.
    assert tuple(small.generate(torch.tensor([[0, 1]]), 3, num_beams=25)[0, 2:].tolist()) == best


@pytest.mark.parametrize("family", CELLS)
def test_recurrent_model_learns_a_repeating_sequence(family):
    model = recurrent(family).train()
    pattern = torch.tensor([1, 5, 2, 7, 3, 9, 4, 11] * 8).unsqueeze(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        _, loss = model(pattern[:, :-1], pattern[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1  # each token names the next: far below the unigram loss ln 8 = 2.08


@pytest.mark.parametrize("family", [*CELLS, "gpt"])
def test_every_family_round_trips_through_the_exported_folder(tmp_path, family):
    keys = {"n_layer": 1, "n_embd": 16, "n_head": 2, "block_size": 8}
    model = build_model(build_config(family, vocab_size=VOCAB, eos_id=0, pad_id=1, **keys)).eval()
    out = save_pretrained(model, tmp_path / "model", tokenizer_file(tmp_path))
    loaded = load_pretrained(out)
    assert type(loaded) is type(model) and loaded.config == model.config
    idx = torch.randint(0, VOCAB, (2, 8))
    assert torch.equal(loaded(idx)[0], model(idx)[0])


def test_a_folder_written_before_families_loads_as_the_gpt_it_was(tmp_path):
    import json

    from lm_tasks.models.gpt import sinusoidal_encoding

    model = build_model(build_config("gpt", vocab_size=VOCAB, n_layer=1, n_head=2, n_embd=16, block_size=8,
                                     pos_encoding="sinusoidal"))
    out = save_pretrained(model, tmp_path / "model", tokenizer_file(tmp_path))
    config = json.loads((out / "config.json").read_text())
    old = {k: v for k, v in config.items() if k not in ("family", "pos_scale")}
    (out / "config.json").write_text(json.dumps(old))
    loaded = load_pretrained(out)  # then, sinusoidal positions were added unscaled
    assert loaded.config.family == "gpt" and torch.equal(loaded.pe, sinusoidal_encoding(8, 16))


def test_only_the_gpt_exports_to_hugging_face(tmp_path):
    out = save_pretrained(recurrent("lstm"), tmp_path / "model", tokenizer_file(tmp_path))
    with pytest.raises(ValueError, match="lstm model; only the GPT maps onto a Hugging Face"):
        export_hf(out, tmp_path / "hf")


# --- the n-gram model ------------------------------------------------------------------------


def kneser_ney_reference(tokens: list[int], V: int, order: int, history: list[int], word: int) -> float:
    """Interpolated Kneser-Ney by its definition, with dictionaries (slow, obviously right)."""
    grams = {k: Counter(tuple(tokens[i:i + k]) for i in range(len(tokens) - k + 1)) for k in range(1, order + 1)}

    def counts(k):  # raw counts at the top order, continuation counts below
        if k == order:
            return grams[k]
        return Counter(gram[1:] for gram in grams[k + 1])

    def p(k, h, w):
        if k == 0:
            return 1.0 / V
        c = counts(k)
        n1, n2 = sum(v == 1 for v in c.values()), sum(v == 2 for v in c.values())
        discount = n1 / (n1 + 2 * n2) if n1 else 0.5
        following = {g: v for g, v in c.items() if g[:-1] == h}
        if not following:
            return p(k - 1, h[1:], w)
        total = sum(following.values())
        return (max(c.get(h + (w,), 0) - discount, 0) / total
                + discount * len(following) / total * p(k - 1, h[1:], w))

    top = min(order, len(history) + 1)
    return p(top, tuple(history[len(history) - top + 1:]), word)


def structured_tokens(n: int, V: int = 6, seed: int = 0) -> torch.Tensor:
    """A token stream with some structure (a noisy cycle), so every order has repeated grams."""
    g = torch.Generator().manual_seed(seed)
    cycle = torch.arange(n) % (V - 1)
    noise = torch.randint(0, V, (n,), generator=g)
    return torch.where(torch.rand(n, generator=g) < 0.3, noise, cycle)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_kneser_ney_matches_its_definition(order):
    V = 6
    train = structured_tokens(400, V)
    model = NGramLM.fit(NGramConfig(vocab_size=V, order=order, block_size=8), train)
    idx = structured_tokens(16, V, seed=1).view(2, 8)
    probs = model(idx)[0].exp()  # (2, 8, V)
    assert torch.allclose(probs.sum(-1), torch.ones(2, 8), atol=1e-5)  # every distribution sums to one
    for b, t, w in itertools.product(range(2), range(8), range(V)):
        expected = kneser_ney_reference(train.tolist(), V, order, idx[b, :t + 1].tolist(), w)
        assert probs[b, t, w].item() == pytest.approx(expected, rel=1e-4), (b, t, w)


def test_ngram_loss_is_the_targets_cross_entropy_and_never_infinite():
    train = structured_tokens(500)
    model = NGramLM.fit(NGramConfig(vocab_size=10, order=3, block_size=8), train)  # ids 6..9 never seen
    idx = torch.tensor([[0, 1, 2, 9, 8, 3, 4, 7]])
    logits, _ = model(idx)
    _, loss = model(idx[:, :-1], idx[:, 1:])
    expected = -logits[:, :-1].gather(-1, idx[:, 1:].unsqueeze(-1)).mean()
    assert torch.isfinite(loss) and loss.item() == pytest.approx(expected.item(), rel=1e-6)
    masked = idx[:, 1:].clone()
    masked[0, :3] = -100
    _, partial = model(idx[:, :-1], masked)
    assert partial.item() == pytest.approx(-logits[0, 3:-1].gather(-1, idx[0, 4:, None]).mean().item(), rel=1e-6)


def test_repetitive_data_and_short_histories_keep_every_probability_positive():
    # Every unigram seen at least twice: the count-of-counts discount would be 0.
    model = NGramLM.fit(NGramConfig(vocab_size=4, order=1), torch.tensor([0, 0, 1, 1, 1]))
    assert bool((model(torch.tensor([[0]]))[0].exp() > 0).all())
    assert torch.isfinite(model(torch.tensor([[0, 1]]), torch.tensor([[2, 3]]))[1])
    high = NGramLM.fit(NGramConfig(vocab_size=11, order=6), structured_tokens(300, V=11))
    for length in (1, 2, 3, 8):  # histories shorter than the order
        assert high(torch.zeros(2, length, dtype=torch.long))[0].shape == (2, length, 11)
    assert high.generate(torch.tensor([[1]]), 6, temperature=0).shape == (1, 7)


def test_higher_orders_model_structured_text_better():
    train, held_out = structured_tokens(20_000), structured_tokens(2_000, seed=7).view(-1, 100)
    losses = []
    for order in (1, 2, 3):
        model = NGramLM.fit(NGramConfig(vocab_size=6, order=order, block_size=100), train)
        losses.append(model(held_out[:, :-1], held_out[:, 1:])[1].item())
    assert losses[0] > losses[1] > losses[2] * 0.999  # the cycle is a bigram pattern; a trigram keeps it


def test_ngram_round_trips_and_generates(tmp_path):
    model = NGramLM.fit(NGramConfig(vocab_size=6, order=3, block_size=8, eos_id=5), structured_tokens(300))
    loaded = load_pretrained(save_pretrained(model, tmp_path / "model", tokenizer_file(tmp_path)))
    assert isinstance(loaded, NGramLM) and loaded.num_parameters() == model.num_parameters() > 0
    idx = structured_tokens(8, seed=2).view(1, 8)
    assert torch.equal(loaded(idx)[0], model(idx)[0])
    sample = loaded.generate(idx[:, :2], 10, generator=torch.Generator().manual_seed(0))
    assert sample.shape == (1, 12) and int(sample.max()) < 6
    greedy = loaded.generate(idx[:, :2], 4, temperature=0)
    assert torch.equal(loaded.generate(idx[:, :2], 4, num_beams=1), greedy)


def test_ngram_refuses_what_it_cannot_represent():
    with pytest.raises(ValueError, match="wider than 63 bits; lower model.order or tokenizer.vocab_size"):
        NGramConfig(vocab_size=50_000, order=5)
    with pytest.raises(ValueError, match="outside the vocabulary of 4"):
        NGramLM.fit(NGramConfig(vocab_size=4, order=2), torch.tensor([0, 1, 5, 2]))
    with pytest.raises(ValueError, match="2 training tokens cannot fit an order-3"):
        NGramLM.fit(NGramConfig(vocab_size=4, order=3), torch.tensor([0, 1]))
    bigram = NGramLM.fit(NGramConfig(vocab_size=4, order=2), torch.tensor([0, 1, 2, 3, 0]))
    with pytest.raises(ValueError, match=r"lack gram_keys_3, .* \(an order-3 model needs them\)"):
        NGramLM(NGramConfig(vocab_size=4, order=3), dict(bigram.state_dict()))


# --- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", CONF_MODELS)
def test_every_shipped_model_config_builds_its_family(name):
    cfg = load_config([f"model={name}"])
    keys = {k: v for k, v in vars(cfg.model).items() if k != "name"}
    model_config = build_config(**keys, vocab_size=300, eos_id=0, pad_id=1)
    assert model_config.family == cfg.model.family and model_config.block_size == cfg.model.block_size
    if cfg.model.family != "gpt2_small" and cfg.model.n_layer != 12:  # GPT-2 small is too big to build here
        model = build_model(model_config)
        assert model.config.vocab_size == 300


def test_fine_tuning_an_ngram_model_is_refused_before_anything_runs():
    with pytest.raises(ConfigError, match="model.family=ngram has no hidden states to fine-tune"):
        load_config(["model=ngram", "finetune=classification"])


def test_what_a_family_cannot_do_is_refused_before_anything_runs():
    with pytest.raises(ConfigError, match="model.order=5 with tokenizer.vocab_size=8192 needs n-gram keys wider"):
        load_config(["model=ngram", "model.order=5", "tokenizer.vocab_size=8192"])
    with pytest.raises(ConfigError, match="trainer.strategy=fsdp shards the GPT's Transformer blocks; a lstm model"):
        load_config(["model=lstm", "trainer=fsdp"])


def test_a_family_needs_its_own_keys():
    with pytest.raises(ConfigError, match="model.family=lstm needs model.n_layer"):
        load_config(["model=lstm", "model.n_layer=null"])
    with pytest.raises(ConfigError, match="Unknown config key 'model.order'"):  # an n-gram key on an LSTM
        load_config(["model=lstm", "model.order=3"])
    with pytest.raises(ConfigError, match="model.family='lsmt' is not one of .* Did you mean 'lstm'"):
        load_config(["model=lstm", "model.family=lsmt"])


@pytest.mark.parametrize("family", ["gpt", *CELLS])
def test_set_dropout_changes_every_rate_of_the_model(family):
    """finetune.<task>.dropout: a model pretrained without dropout regularises in fine-tuning."""
    torch.manual_seed(0)
    model = build_model(build_config(family, vocab_size=VOCAB, block_size=12, n_layer=2, n_embd=16, n_head=2))
    idx = torch.randint(0, VOCAB, (2, 12))
    model.train()
    assert torch.equal(model(idx)[0], model(idx)[0])  # pretrained without dropout: deterministic
    model.set_dropout(0.3)
    assert model.config.dropout == 0.3
    assert all(m.p == 0.3 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    assert not torch.equal(model(idx)[0], model(idx)[0])  # now dropping out, attention included for gpt
    model.eval()
    assert torch.equal(model(idx)[0], model(idx)[0])  # never at inference


def test_the_config_names_exactly_the_families_the_models_implement():
    from lm_tasks.config import MODEL_FAMILIES
    from lm_tasks.models.io import FAMILIES

    assert tuple(FAMILIES) == MODEL_FAMILIES
    with pytest.raises(ConfigError, match="model.family"):
        load_config(["model.family=transformer"])
