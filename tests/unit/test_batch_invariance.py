"""Evaluation does not depend on the batch: bits per byte, beam search and task predictions
come out the same at every batch size, with tiny randomly initialised models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from datasets import Dataset

from lm_tasks.config import TokenizerConfig
from lm_tasks.evaluation import heldout_loss, lm_metrics
from lm_tasks.models.gpt import GPT, GPTConfig
from lm_tasks.models.ngram import NGramConfig, NGramLM
from lm_tasks.models.recurrent import RecurrentConfig, RecurrentLM
from lm_tasks.tasks.classification import ClassificationAdapter
from lm_tasks.tasks.embedded import question_answering, sentiment, translation
from lm_tasks.tasks.evaluate import predict_all
from lm_tasks.tasks.qa import QAAdapter
from lm_tasks.tasks.seq2seq import Seq2SeqAdapter
from lm_tasks.tokenizer import special_token_ids, train_tokenizer

VOCAB = 40


def tiny(family: str, vocab_size: int = VOCAB, block_size: int = 16, **ids):
    """A randomly initialised GPT or LSTM (ids: eos_id, pad_id), its matrices drawn wide (std 0.3)
    so that what it predicts depends on its input (at the GPT's std 0.02 it hardly does)."""
    torch.manual_seed(0)
    if family == "gpt":
        model = GPT(GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=32, **ids))
    else:
        model = RecurrentLM(RecurrentConfig(vocab_size=vocab_size, family=family, block_size=block_size, n_layer=2,
                                            n_embd=32, **ids))
    for weight in model.parameters():
        if weight.dim() == 2:
            torch.nn.init.normal_(weight, std=0.3)
    return model.eval()


# --- held-out bits per byte -----------------------------------------------------------


@pytest.fixture(scope="module")
def tokens_dir(tmp_path_factory):
    """A packed validation split of 40 blocks of 16 tokens (+1): batches of 7 and 32 end partial."""
    folder = tmp_path_factory.mktemp("tokens")
    stream = np.random.default_rng(0).integers(0, VOCAB, 40 * 16 + 1).astype(np.uint16)
    stream.tofile(folder / "validation.bin")
    meta = {"dtype": "uint16", "splits": {"validation": {"tokens": int(stream.size), "bytes": 3 * int(stream.size)}}}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


@pytest.mark.parametrize("family", ["gpt", "lstm", "ngram"])
def test_heldout_bpb_is_the_same_at_every_batch_size(tokens_dir, family):
    if family == "ngram":
        model = NGramLM.fit(NGramConfig(vocab_size=VOCAB, order=3, block_size=16),
                            torch.from_numpy(np.random.default_rng(1).integers(0, VOCAB, 2000)))
    else:
        model = tiny(family)
    bpb = {size: lm_metrics(heldout_loss(model, tokens_dir, size), tokens_dir)["bpb"] for size in (1, 7, 32)}
    assert bpb[7] == pytest.approx(bpb[1], abs=1e-6)
    assert bpb[32] == pytest.approx(bpb[1], abs=1e-6)
    # Tokens drawn uniformly: no model beats log2(40) bits a token, at 3 bytes a token 1.77 bits per byte.
    assert 1.7 < bpb[1] < 4.0


# --- beam search and greedy decoding on a batch --------------------------------------------


PROMPT_LENGTHS = (1, 3, 5, 3, 5, 3, 12)  # 12 + 10 new tokens run past the GPT's 16-token context


@pytest.mark.parametrize("family", ["gpt", "lstm"])
@pytest.mark.parametrize("num_beams", [1, 3])
def test_batched_decoding_equals_one_prompt_at_a_time(family, num_beams):
    model = tiny(family)
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in PROMPT_LENGTHS]
    # An end token the models produce early for some prompts, late or never for others.
    eos = int(model(torch.tensor([prompts[0]]))[0][0, -1].argmax())
    for eos_id in (None, eos):
        batched = model.decode_each(prompts, 10, eos_id=eos_id, num_beams=num_beams, batch_size=2)
        alone = [model.generate(torch.tensor([p]), 10, temperature=0, eos_id=eos_id, num_beams=num_beams)
                 [0, len(p):].tolist() for p in prompts]
        assert batched == alone
        if eos_id is None:
            assert all(len(new) == 10 for new in batched)
    assert any(len(new) < 10 for new in batched), "eos never ended a hypothesis: the test would miss padding"


def test_beam_search_on_a_batch_of_one_length_pads_finished_rows_with_eos():
    model = tiny("gpt")
    prompts = torch.randint(0, VOCAB, (4, 3), generator=torch.Generator().manual_seed(3))
    eos = int(model(prompts[:1])[0][0, -1].argmax())
    out = model.generate(prompts, 8, eos_id=eos, num_beams=3)
    for row, prompt in zip(out, prompts):
        alone = model.generate(prompt[None], 8, eos_id=eos, num_beams=3)[0]
        assert torch.equal(row[:alone.numel()], alone)
        assert (row[alone.numel():] == eos).all()


# --- task predictions -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    cfg = TokenizerConfig(name="bpe", kind="bpe", vocab_size=300, min_frequency=1, eos_token="<|endoftext|>",
                          pad_token="<|pad|>", unk_token="<|unk|>", sep_token="<|sep|>", extra_special_tokens=[])
    texts = (list(sentiment(50, 1)["train"]["text"]) + list(question_answering(50, 1)["train"]["context"])
             + list(translation(50, 1)["train"]["source"]) + list(translation(50, 1)["train"]["target"]))
    tokenizer = train_tokenizer(Dataset.from_dict({"text": texts}), cfg, tmp_path_factory.mktemp("t") / "tok.json")
    return tokenizer, special_token_ids(tokenizer, cfg), tokenizer.token_to_id("<|sep|>")


def predictions_at(adapter, model, head, rows: Dataset, tokenizer) -> dict[int, list]:
    encoded, _ = adapter.encode(rows, tokenizer)
    return {size: predict_all(adapter, model, head, encoded, size)[0] for size in (1, 7, 32)}


@pytest.mark.parametrize("family", ["gpt", "lstm"])
def test_classification_predictions_do_not_depend_on_the_batch(tokenizer, family):
    tokenizer, ids, _ = tokenizer
    model = tiny(family, ids.vocab_size, 32, eos_id=ids.eos_id, pad_id=ids.pad_id)
    adapter = ClassificationAdapter(["negative", "positive"], "last", 32, ids.pad_id)
    head = adapter.build_head(model).eval()
    by_size = predictions_at(adapter, model, head, sentiment(10, 40, seed=1)["validation"], tokenizer)
    labels = {size: [p["label_id"] for p in predictions] for size, predictions in by_size.items()}
    assert labels[1] == labels[7] == labels[32] and len(labels[1]) == 40 and set(labels[1]) == {0, 1}
    for size in (7, 32):  # the scores agree to float32 rounding (rows of different widths share a matmul)
        assert [p["score"] for p in by_size[size]] == pytest.approx([p["score"] for p in by_size[1]], abs=1e-6)


def test_qa_answers_do_not_depend_on_the_batch(tokenizer):
    tokenizer, ids, sep_id = tokenizer
    model = tiny("gpt", ids.vocab_size, 48, eos_id=ids.eos_id, pad_id=ids.pad_id)
    adapter = QAAdapter(max_length=48, stride=8, max_answer_tokens=10, n_best=5, sep_id=sep_id, pad_id=ids.pad_id)
    torch.manual_seed(1)
    head = adapter.build_head(model).eval()
    by_size = predictions_at(adapter, model, head, question_answering(10, 20, seed=1)["validation"], tokenizer)
    answers = {size: [(p["example_id"], p["text"]) for p in predictions] for size, predictions in by_size.items()}
    assert answers[1] == answers[7] == answers[32]
    assert any(text for _, text in answers[1])  # some span answers: the comparison covers spans


@pytest.mark.parametrize("num_beams", [1, 3])
def test_seq2seq_outputs_do_not_depend_on_the_batch(tokenizer, num_beams):
    tokenizer, ids, sep_id = tokenizer
    model = tiny("gpt", ids.vocab_size, 48, eos_id=ids.eos_id, pad_id=ids.pad_id)
    adapter = Seq2SeqAdapter("translation", 48, sep_id, ids.eos_id, ids.pad_id, num_beams, 6, tokenizer)
    by_size = predictions_at(adapter, model, None, translation(10, 12, seed=1)["validation"], tokenizer)
    assert by_size[1] == by_size[7] == by_size[32]
    assert len({p["text"] for p in by_size[1]}) > 1  # prompts of several lengths, decoded differently
