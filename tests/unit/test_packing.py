"""Packed token arrays and the memmap block loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset
from tokenizers import Tokenizer

from lm_tasks.config import TokenizerConfig
from lm_tasks.data import packing
from lm_tasks.data.packing import PackedBlocks, pack_split, token_dtype
from lm_tasks.tokenizer import special_token_ids, train_tokenizer

DOCS = ["first document, with words", "second one", "a third, longer document about packing tokens"] * 10


@pytest.fixture
def packed(tmp_path):
    cfg = TokenizerConfig(name="bpe", kind="bpe", vocab_size=300, min_frequency=1, eos_token="<|endoftext|>",
                          pad_token="<|pad|>", unk_token="<|unk|>", sep_token="<|sep|>", extra_special_tokens=[])
    tok_path = tmp_path / "tokenizer.json"
    tokenizer = train_tokenizer(Dataset.from_dict({"text": DOCS}), cfg, tok_path)
    eos = special_token_ids(tokenizer, cfg).eos_id
    meta = pack_split(Dataset.from_dict({"text": DOCS}), tok_path, eos, tokenizer.get_vocab_size(),
                      tmp_path / "train.bin")
    expected = []
    for doc in DOCS:
        expected += tokenizer.encode(doc, add_special_tokens=False).ids + [eos]
    return tmp_path / "train.bin", meta, expected


def test_pack_writes_documents_separated_by_eos(packed):
    path, meta, expected = packed
    stored = np.memmap(path, dtype=meta["dtype"], mode="r")
    assert stored.tolist() == expected
    assert meta["tokens"] == len(expected) and meta["documents"] == len(DOCS)
    assert meta["bytes"] == sum(len(d.encode()) for d in DOCS) + len(DOCS)
    assert meta["dtype"] == "uint16"


def test_block_loader_returns_exactly_the_packed_tokens(packed):
    path, meta, expected = packed
    blocks = PackedBlocks(path, block_size=8, dtype=meta["dtype"])
    assert len(blocks) == (len(expected) - 1) // 8
    for i in range(len(blocks)):
        x, y = blocks[i]
        assert x.dtype == torch.int64 and x.shape == (8,)
        assert x.tolist() == expected[i * 8:(i + 1) * 8]
        assert y.tolist() == expected[i * 8 + 1:(i + 1) * 8 + 1]


def test_too_few_tokens_for_a_block_is_a_clear_error(packed):
    path, meta, expected = packed
    with pytest.raises(ValueError, match="too few for one block"):
        PackedBlocks(path, block_size=len(expected), dtype=meta["dtype"])


def test_dtype_follows_vocabulary_size():
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


def test_packing_streams_in_batches_with_the_same_result(packed, tmp_path, monkeypatch):
    """Batches of 7 rows (the 30 documents span several) give the same tokens, byte count
    and document starts as the expected whole stream."""
    path, meta, expected = packed
    monkeypatch.setattr(packing, "_PACK_BATCH", 7)
    tokenizer = Tokenizer.from_file(str(path.parent / "tokenizer.json"))
    eos = expected[-1]
    small = pack_split(Dataset.from_dict({"text": DOCS}), path.parent / "tokenizer.json", eos,
                       tokenizer.get_vocab_size(), tmp_path / "batched" / "train.bin")
    assert small == meta
    assert np.fromfile(tmp_path / "batched" / "train.bin", dtype=meta["dtype"]).tolist() == expected
    lengths = [len(tokenizer.encode(doc, add_special_tokens=False).ids) + 1 for doc in DOCS]
    starts = np.load(packing.docs_path(tmp_path / "batched" / "train.bin"))
    assert starts.dtype == np.int64 and starts.tolist() == [sum(lengths[:i]) for i in range(len(DOCS))]
