"""Packed token arrays: every split tokenised once into one flat memory-mapped file.

Documents are concatenated with the end-of-text id between them and written as
`<split>.bin` (uint16 when the vocabulary fits, else uint32) plus `meta.json`
with the token and byte counts that bits-per-byte needs. `<split>.docs.npy` holds
where each document starts, so any token traces back to its row of the cleaned split
and from there to its source file and line (`trace_token`). Training slices blocks
out of the memmap, so the loader does no tokenising and no per-step Python work
beyond one slice.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import torch
from datasets import Dataset
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from lm_tasks.artifacts import atomic_path, read_json
from lm_tasks.data.mapping import LocalMap

META_FILE = "meta.json"
_PACK_BATCH = 4096  # tokenised rows packed at once


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


@lru_cache(maxsize=4)
def _cached_tokenizer(path: str, mtime: float) -> Tokenizer:
    return Tokenizer.from_file(path)


def encode_batch(batch: dict, tokenizer_path: str, tokenizer_mtime: float) -> dict:
    tokenizer = _cached_tokenizer(tokenizer_path, tokenizer_mtime)
    encodings = tokenizer.encode_batch(batch["text"], add_special_tokens=False)
    return {"ids": [e.ids for e in encodings], "n_bytes": [len(t.encode("utf-8")) for t in batch["text"]]}


def pack_split(ds: Dataset, tokenizer_path: str | Path, eos_id: int, vocab_size: int,
               out_path: str | Path, num_proc: int = 1, mapper=None) -> dict:
    """Tokenise `ds` and write its packed token stream; return counts for meta.json.

    Bytes are counted as UTF-8 text plus one byte per document separator, the
    same text the tokens encode, so loss / bytes gives honest bits per byte.

    Streaming: the tokenised rows (an Arrow file on disk) are read `_PACK_BATCH` rows at a
    time, and each batch's tokens are appended to the .bin file and its document starts
    to the memory-mapped docs index, so memory holds one batch whatever the split's size.
    Tokenising runs in `num_proc` processes, or with `mapper` (lm_tasks.data.mapping) on a
    Dask cluster; writing the .bin stays here, in order.
    """
    path = str(tokenizer_path)
    mapper = mapper or LocalMap(num_proc)
    encoded = mapper(ds, encode_batch, remove_columns=ds.column_names, desc=f"tokenise {Path(out_path).stem}",
                     fn_kwargs={"tokenizer_path": path, "tokenizer_mtime": Path(path).stat().st_mtime})
    dtype = token_dtype(vocab_size)
    n_tokens = n_bytes = done = 0
    with atomic_path(docs_path(out_path)) as docs_tmp, atomic_path(out_path) as bin_tmp:
        starts = np.lib.format.open_memmap(docs_tmp, mode="w+", dtype=np.int64, shape=(len(encoded),))
        with open(bin_tmp, "wb") as f:
            for batch in tqdm(encoded.with_format("arrow").iter(batch_size=_PACK_BATCH),
                              total=-(-len(encoded) // _PACK_BATCH), desc=f"pack {Path(out_path).name}", leave=False):
                lengths = pc.list_value_length(batch["ids"]).to_numpy(zero_copy_only=False) + 1  # + end of text
                ends = np.cumsum(lengths)
                tokens = np.full(int(ends[-1]), eos_id, dtype=dtype)  # the eos stays at each document's end
                inside = np.ones(len(tokens), dtype=bool)
                inside[ends - 1] = False
                tokens[inside] = pc.list_flatten(batch["ids"]).to_numpy(zero_copy_only=False)
                f.write(tokens.tobytes())
                starts[done:done + len(lengths)] = n_tokens + ends - lengths
                n_tokens += int(ends[-1])
                n_bytes += int(pc.sum(batch["n_bytes"]).as_py())
                done += len(lengths)
        starts.flush()
        del starts
    return {"tokens": n_tokens, "bytes": n_bytes + len(encoded), "documents": len(encoded), "dtype": dtype.name}


def docs_path(bin_path: str | Path) -> Path:
    return Path(bin_path).with_suffix(".docs.npy")


def trace_token(tokens_dir: str | Path, split: str, position: int, dataset: Dataset) -> dict:
    """The document that the token at `position` of `<split>.bin` belongs to: its index in
    the cleaned split, offset inside the document in tokens, source and row."""
    packed = Path(tokens_dir) / f"{split}.bin"
    starts = np.load(docs_path(packed), mmap_mode="r")
    n_tokens = packed.stat().st_size // np.dtype(read_meta(tokens_dir)["dtype"]).itemsize
    if not 0 <= position < n_tokens:
        raise IndexError(f"token position {position} is outside {packed} ({n_tokens} tokens)")
    index = int(np.searchsorted(starts, position, side="right")) - 1
    row = dataset[index]
    return {"document": index, "token_offset": position - int(starts[index]), "source": row["source"],
            "row": row["row"], "text": row["text"]}


def read_meta(tokens_dir: str | Path) -> dict:
    path = Path(tokens_dir) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"No packed token arrays at {tokens_dir} ({META_FILE} missing). "
            "Run the tokenizer stage first (python -m flows.tokenizer)."
        )
    return read_json(path)


class PackedBlocks(torch.utils.data.Dataset):
    """Non-overlapping blocks of a packed token file: (input, next-token target) pairs."""

    def __init__(self, path: str | Path, block_size: int, dtype: str):
        self.path, self.block_size, self.dtype = str(path), block_size, np.dtype(dtype)
        n_tokens = Path(path).stat().st_size // self.dtype.itemsize
        self.n_blocks = (n_tokens - 1) // block_size
        if self.n_blocks < 1:
            raise ValueError(
                f"{path} holds {n_tokens} tokens: too few for one block of {block_size} + 1. "
                "Use more data, a larger validation split (data.val_ratio) or a smaller model.block_size."
            )
        self._tokens: np.memmap | None = None  # opened lazily, once per worker process

    def __len__(self) -> int:
        return self.n_blocks

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._tokens is None:
            self._tokens = np.memmap(self.path, dtype=self.dtype, mode="r")
        start = i * self.block_size
        chunk = torch.from_numpy(self._tokens[start:start + self.block_size + 1].astype(np.int64))
        return chunk[:-1], chunk[1:]
