"""Extractive QA: windows, offset mapping round trips, post-processing."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from lm_tasks.config import TokenizerConfig
from lm_tasks.tasks.embedded import question_answering
from lm_tasks.tasks.qa import QAAdapter, char_span_to_tokens, sliding_window_answer, token_windows
from lm_tasks.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    cfg = TokenizerConfig(name="bpe", kind="bpe", vocab_size=400, min_frequency=1, eos_token="<|endoftext|>",
                          pad_token="<|pad|>", unk_token="<|unk|>", sep_token="<|sep|>", extra_special_tokens=[])
    texts = list(question_answering(n_train=200, n_validation=1)["train"]["context"])
    return train_tokenizer(Dataset.from_dict({"text": texts}), cfg, tmp_path_factory.mktemp("t") / "tokenizer.json")


def test_windows_cover_everything_with_the_stride_overlap():
    windows = token_windows(100, room=40, stride=10)
    assert windows == [(0, 40), (30, 70), (60, 100)]
    assert token_windows(20, room=40, stride=10) == [(0, 20)]
    with pytest.raises(ValueError, match="longer than the stride"):
        token_windows(100, room=10, stride=10)


def test_offset_mapping_round_trips_character_spans_across_windows(tokenizer):
    data = question_answering(n_train=50, n_validation=1)["train"]
    adapter = QAAdapter(max_length=24, stride=8, max_answer_tokens=10, n_best=5, sep_id=3, pad_id=1)
    features, split = adapter.encode(data, tokenizer)
    assert split > 0  # short windows: contexts span several windows
    checked = 0
    for f in features:
        base = f["context_start"]
        if f["start"] == base - 1:
            continue  # no answer in this window
        chars = (f["offsets"][f["start"] - base][0], f["offsets"][f["end"] - base][1])
        assert f["context"][chars[0]:chars[1]].strip() == f["answers"][0]
        checked += 1
    # Every answerable example finds its answer in at least one window.
    answerable = {i for i, a in enumerate(data["answers"]) if a["text"]}
    found = {f["example_id"] for f in features if f["start"] != f["context_start"] - 1}
    assert found == answerable and checked >= len(answerable)


def test_span_partly_outside_a_window_is_no_answer():
    offsets = [[0, 5], [5, 11], [11, 17]]
    assert char_span_to_tokens(offsets, (6, 11)) == (1, 1)
    assert char_span_to_tokens(offsets, (6, 20)) is None
    assert char_span_to_tokens([[10, 15]], (2, 12)) is None


def test_answers_not_in_context_are_counted_and_skipped(tokenizer):
    ds = Dataset.from_list([
        {"context": "Alice lives in Oslo.", "question": "Where?", "answers": {"text": ["Oslo"], "answer_start": [15]}},
        {"context": "Bruno lives in Lima.", "question": "Where?", "answers": {"text": ["Rome"], "answer_start": [15]}},
    ])
    adapter = QAAdapter(max_length=64, stride=8, max_answer_tokens=10, n_best=5, sep_id=3, pad_id=1)
    features, _ = adapter.encode(ds, tokenizer)
    assert set(features["example_id"]) == {0}
    assert adapter.skipped == {"answers_not_in_context": 1, "examples_without_valid_answer": 1}


def test_postprocessing_picks_the_best_span_over_windows_or_no_answer():
    adapter = QAAdapter(max_length=64, stride=8, max_answer_tokens=3, n_best=5, sep_id=3, pad_id=1)
    context = "Alice lives in Oslo."
    windows = [{"example_id": 0, "spans": [(2.0, 0, 5)], "null": 1.0, "context": context},
               {"example_id": 0, "spans": [(5.0, 14, 19)], "null": 3.0, "context": context},
               {"example_id": 1, "spans": [(0.5, 0, 5)], "null": 4.0, "context": context}]
    refs = [{"example_id": 0, "answers": ["Oslo"]}] * 2 + [{"example_id": 1, "answers": []}]
    final, golds = adapter.finalize(windows, refs)
    assert [p["text"] for p in final] == ["Oslo", ""]
    assert golds == [["Oslo"], []]
    assert adapter.score(final, golds) == {"exact_match": 100.0, "f1": 100.0}
    always_answer = QAAdapter(max_length=64, stride=8, max_answer_tokens=3, n_best=5, sep_id=3, pad_id=1,
                              allow_no_answer=False)
    assert [p["text"] for p in always_answer.finalize(windows, refs)[0]] == ["Oslo", "Alice"]


def test_logits_mask_everything_but_context_and_separator():
    adapter = QAAdapter(max_length=64, stride=8, max_answer_tokens=3, n_best=5, sep_id=3, pad_id=1)
    from lm_tasks.models.gpt import GPT, GPTConfig

    model = GPT(GPTConfig(vocab_size=20, block_size=16, n_layer=1, n_head=1, n_embd=8)).eval()
    head = adapter.build_head(model)
    batch = {"idx": torch.tensor([[5, 6, 3, 7, 8, 1]]), "lengths": torch.tensor([5]),
             "context_start": torch.tensor([3])}
    start, end = adapter.logits(model, head, batch)
    allowed = (start > -1e8).tolist()[0]
    assert allowed == [False, False, True, True, True, False]


def test_the_sliding_window_baseline_answers_beside_the_question_words():
    context = ("The castle stands on a hill above the town. It was built in 1204 by King John "
               "and rebuilt after a fire. Visitors come every summer.")
    assert "1204" in sliding_window_answer(context, "When was the castle built by King John?", 2)
    assert sliding_window_answer("Too short.", "Anything?", 3) == "Too short."
    assert sliding_window_answer(context, "Zebra?", 2) == "The castle"  # no overlap anywhere: the first span
