"""The GPT model: shapes, causality, initial loss, learning, generation."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lm_tasks.models.base import filter_logits
from lm_tasks.models.gpt import GPT, GPTConfig, KVCache, position_table, sinusoidal_encoding

VOCAB = 97


def tiny(pos_encoding="learned", **kw) -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=VOCAB, block_size=16, n_layer=2, n_head=2, n_embd=32,
                    pos_encoding=pos_encoding, **kw)
    return GPT(cfg).eval()


@pytest.mark.parametrize("pos", ["learned", "sinusoidal"])
def test_shapes_and_loss(pos):
    model = tiny(pos)
    idx = torch.randint(0, VOCAB, (3, 16))
    logits, loss = model(idx)
    assert logits.shape == (3, 16, VOCAB) and loss is None
    _, loss = model(idx, idx)
    assert loss.shape == ()


def test_initial_loss_is_close_to_uniform():
    model = tiny()
    idx = torch.randint(0, VOCAB, (8, 16))
    _, loss = model(idx, torch.randint(0, VOCAB, (8, 16)))
    assert abs(loss.item() - math.log(VOCAB)) < 0.1


def test_output_head_is_tied_to_embedding():
    model = tiny()
    assert model.lm_head.weight is model.wte.weight


def test_overfits_a_single_batch():
    model = tiny(dropout=0.0).train()
    torch.manual_seed(1)
    x = torch.randint(0, VOCAB, (4, 16))
    y = torch.roll(x, -1, dims=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        _, loss = model(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05


def test_rejects_sequences_longer_than_the_block():
    with pytest.raises(ValueError, match="exceeds block_size 16"):
        tiny()(torch.zeros(1, 17, dtype=torch.long))


def test_sinusoidal_encoding_matches_the_formula():
    pe = sinusoidal_encoding(10, 8)
    pos, i = 7, 2
    assert pe[pos, 2 * i].item() == pytest.approx(math.sin(pos / 10000 ** (2 * i / 8)), abs=1e-6)
    assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(pos / 10000 ** (2 * i / 8)), abs=1e-6)


def test_sinusoidal_positions_start_on_the_learned_tables_scale():
    model = tiny("sinusoidal")
    assert torch.equal(model.pe, position_table(model.config))
    assert model.pe.std().item() == pytest.approx(tiny("learned").wpe.weight.std().item(), rel=0.25)


def test_optimizer_groups_split_matrices_from_vectors():
    model = tiny()
    decay, no_decay = model.optimizer_groups(0.1)
    assert all(p.dim() == 2 for p in decay["params"]) and decay["weight_decay"] == 0.1
    assert all(p.dim() == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    n_grouped = sum(p.numel() for g in (decay, no_decay) for p in g["params"])
    assert n_grouped == sum(p.numel() for p in model.parameters())


def test_greedy_generation_is_deterministic_and_extends():
    model = tiny()
    prompt = torch.tensor([[1, 2, 3]])
    a = model.generate(prompt, 20, temperature=0)
    b = model.generate(prompt, 20, temperature=0)
    assert a.shape == (1, 23) and torch.equal(a, b) and torch.equal(a[:, :3], prompt)


def test_generation_stops_at_eos():
    model = tiny()
    logits, _ = model(torch.tensor([[5]]))
    eos = int(logits[0, -1].argmax())  # the first greedy token: generation must stop right there
    out = model.generate(torch.tensor([[5]]), 10, temperature=0, eos_id=eos)
    assert out.tolist() == [[5, eos]]


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept_k = torch.isfinite(filter_logits(logits, top_k=2, top_p=None))
    assert kept_k.tolist() == [[True, True, False, False]]
    kept_p = torch.isfinite(filter_logits(logits, top_k=None, top_p=0.7))
    assert kept_p.tolist() == [[True, True, False, False]]  # 0.5 < 0.7, 0.5 + 0.3 crosses it


def test_kv_cache_matches_full_recompute_token_for_token():
    model = tiny()
    prompt = torch.randint(0, VOCAB, (2, 5))
    # 30 new tokens run past block_size (16): the cached path must crop exactly like the uncached one.
    for kwargs in ({"temperature": 0}, {"temperature": 1.0, "top_k": 20, "top_p": 0.9}):
        cached = model.generate(prompt, 30, generator=torch.Generator().manual_seed(0), **kwargs)
        full = model.generate(prompt, 30, use_cache=False, generator=torch.Generator().manual_seed(0), **kwargs)
        assert torch.equal(cached, full)


def test_cached_forward_equals_uncached_logits():
    model = tiny()
    idx = torch.randint(0, VOCAB, (2, 10))
    full, _ = model(idx)
    cache = KVCache(model.config.n_layer, model.config.block_size)
    prefix, _ = model(idx[:, :6], cache=cache)
    steps = [model(idx[:, t:t + 1], cache=cache)[0] for t in range(6, 10)]
    assert torch.allclose(torch.cat([prefix, *steps], dim=1), full, atol=1e-5)


def test_beam_search_with_one_beam_is_greedy():
    model = tiny()
    prompt = torch.tensor([[3, 1, 4, 1, 5]])
    greedy = model.generate(prompt, 12, temperature=0)
    assert torch.equal(model.beam_search(prompt, 12, num_beams=1), greedy)
    eos = int(greedy[0, 7])  # make greedy stop early: both must stop at the same place
    assert torch.equal(model.beam_search(prompt, 12, num_beams=1, eos_id=eos),
                       model.generate(prompt, 12, temperature=0, eos_id=eos))


def test_wide_beam_search_finds_the_most_probable_continuation():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=5, block_size=8, n_layer=1, n_head=1, n_embd=8)).eval()
    prompt = torch.tensor([[0, 1]])

    def log_prob(tokens):
        logits, _ = model(torch.tensor([[0, 1, *tokens]]))
        log_probs = torch.log_softmax(logits[0, 1:-1], dim=-1)
        return sum(log_probs[i, t].item() for i, t in enumerate(tokens))

    best = max(itertools.product(range(5), repeat=3), key=log_prob)
    found = model.generate(prompt, 3, num_beams=25)[0, 2:].tolist()
    assert tuple(found) == best


def test_beam_search_takes_a_batch_of_prompts_each_searched_alone():
    model = tiny()
    prompts = torch.randint(0, VOCAB, (3, 4), generator=torch.Generator().manual_seed(0))
    out = model.generate(prompts, 6, num_beams=3)
    assert out.shape == (3, 10)
    for row, prompt in zip(out, prompts):
        assert torch.equal(row, model.generate(prompt[None], 6, num_beams=3)[0])
