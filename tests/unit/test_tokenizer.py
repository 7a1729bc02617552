"""Tokenizer training: round trips, special tokens, the single tokenizer.json."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset

from lm_tasks.config import TokenizerConfig
from lm_tasks.tokenizer import load_tokenizer, special_token_ids, train_tokenizer

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Café, naïve, Straße and 東京 are words too; so is 🙂.",
    "def f(x):\n    return x * 2  # indented code\n",
    "Numbers 12345 and symbols <>&%$ also appear.",
] * 20


def config(kind: str = "bpe", vocab_size: int = 400) -> TokenizerConfig:
    return TokenizerConfig(name=kind, kind=kind, vocab_size=vocab_size, min_frequency=2,
                           eos_token="<|endoftext|>", pad_token="<|pad|>", unk_token="<|unk|>",
                           sep_token="<|sep|>", extra_special_tokens=["<|user|>"])


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    train_tokenizer(Dataset.from_dict({"text": TEXTS}), config(), path)
    return path


def test_byte_level_bpe_round_trips_any_text(bpe):
    tokenizer = load_tokenizer(bpe)
    unseen = "Ünïcödé never seen 𝔘𝔫𝔦 \t\n  and  spaces  "
    for text in TEXTS[:4] + [unseen]:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        assert tokenizer.decode(ids) == text


def test_special_tokens_are_single_ids_in_order(bpe):
    tokenizer = load_tokenizer(bpe)
    specials = special_token_ids(tokenizer, config())
    assert (specials.eos_id, specials.pad_id) == (0, 1)
    assert tokenizer.token_to_id("<|sep|>") == 3 and tokenizer.token_to_id("<|user|>") == 4
    assert tokenizer.encode("a<|endoftext|>b", add_special_tokens=False).ids.count(0) == 1
    assert specials.vocab_size == tokenizer.get_vocab_size() <= 400


def test_saved_as_one_json_file(bpe):
    saved = json.loads(bpe.read_text())
    assert saved["model"]["type"] == "BPE"
    assert [t["content"] for t in saved["added_tokens"]][:2] == ["<|endoftext|>", "<|pad|>"]
    assert sorted(p.name for p in bpe.parent.iterdir()) == ["tokenizer.json"]


@pytest.mark.parametrize("kind,model_type", [("wordpiece", "WordPiece"), ("unigram", "Unigram")])
def test_other_kinds_train(tmp_path, kind, model_type):
    path = tmp_path / "tokenizer.json"
    tokenizer = train_tokenizer(Dataset.from_dict({"text": TEXTS}), config(kind, 200), path)
    assert json.loads(path.read_text())["model"]["type"] == model_type
    ids = tokenizer.encode("The quick brown fox", add_special_tokens=False).ids
    assert tokenizer.decode(ids).replace(" ", "") == "Thequickbrownfox"


def test_missing_tokenizer_names_the_stage(tmp_path):
    with pytest.raises(FileNotFoundError, match="Run the tokenizer stage first"):
        load_tokenizer(tmp_path / "nope.json")
