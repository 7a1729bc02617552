"""Cleaned data on disk: parquet shards plus a manifest that later stages trust.

    shards/<split>-00000.parquet ...   columns text, source, row, n_bytes
    manifest.json                     per shard: split, name, rows, bytes (UTF-8 text),
                                      sha256; per split: rows, bytes; the dataset digest

The shards folder is written aside and renamed into place, and the manifest is written
after it (by the data stage, last of all), so a reader sees every shard or no data.
`load_shards` checks each shard's rows and digest against the manifest before
handing the splits on: a truncated or swapped shard is an error naming it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasets import Dataset, DatasetDict

from lm_tasks.artifacts import atomic_path, file_digest, read_json
from lm_tasks.data.columns import column, rows

MANIFEST = "manifest.json"
SHARDS = "shards"
_BATCH_ROWS = 10_000  # rows per parquet row group written


class ShardError(RuntimeError):
    """The cleaned data on disk does not match its manifest."""


def shard_manifest(dataset: DatasetDict, out_dir: str | Path, shard_rows: int) -> dict:
    """Write every split as parquet shards of at most `shard_rows` rows; return the manifest
    (the caller writes it, last, once everything else is in place)."""
    out_dir = Path(out_dir)
    shards = []
    with atomic_path(out_dir / SHARDS, is_dir=True) as tmp:
        tmp.mkdir(parents=True, exist_ok=True)
        for split, ds in dataset.items():
            count = max(1, -(-len(ds) // shard_rows))
            for i in range(count):
                part = ds.select(range(i * shard_rows, min((i + 1) * shard_rows, len(ds))))
                name = f"{split}-{i:05d}.parquet"
                _write_parquet(part, tmp / name)
                n_bytes = pc.sum(column(part, "n_bytes")).as_py() if len(part) else 0
                shards.append({"split": split, "name": name, "rows": len(part), "bytes": int(n_bytes or 0),
                               "sha256": file_digest(tmp / name)})
    splits = {split: {"rows": sum(s["rows"] for s in shards if s["split"] == split),
                      "bytes": sum(s["bytes"] for s in shards if s["split"] == split),
                      "shards": sum(s["split"] == split for s in shards)} for split in dataset}
    digest = hashlib.sha256("".join(f"{s['name']}:{s['sha256']}" for s in shards).encode()).hexdigest()
    return {"format": "parquet", "shards": shards, "splits": splits, "digest": digest}


def _write_parquet(ds: Dataset, path: Path) -> None:
    """`ds` as one parquet file, `_BATCH_ROWS` rows at a time (memory stays bounded), zstd
    compressed. Written with pyarrow directly: `Dataset.to_parquet` takes several times longer,
    and dictionary encoding is kept to the provenance column (unique texts would only fill a
    dictionary to be discarded)."""
    with pq.ParquetWriter(path, ds.features.arrow_schema, compression="zstd", use_dictionary=["source"]) as writer:
        for start in range(0, len(ds), _BATCH_ROWS):
            writer.write_table(rows(ds, start, min(start + _BATCH_ROWS, len(ds))))


def read_manifest(data_dir: str | Path) -> dict:
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"No cleaned data at {data_dir} ({MANIFEST} missing). Run the data stage first "
            "(python -m flows.data, with the same overrides)."
        )
    return read_json(path)


def load_shards(data_dir: str | Path) -> DatasetDict:
    """The cleaned splits, each shard checked against the manifest (the Arrow copies that
    `datasets` reads from go to its own cache, never into data_dir)."""
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    files: dict[str, list[str]] = {}
    for shard in manifest["shards"]:
        path = data_dir / SHARDS / shard["name"]
        if not path.is_file():
            raise ShardError(f"Shard {path} listed in {data_dir / MANIFEST} is missing; re-run the data stage")
        if file_digest(path) != shard["sha256"]:
            raise ShardError(f"Shard {path} does not match its digest in {data_dir / MANIFEST} "
                             "(changed or truncated); re-run the data stage (cache.refresh=data)")
        files.setdefault(shard["split"], []).append(str(path))
    splits = {split: Dataset.from_parquet(paths) for split, paths in files.items()}
    for split, ds in splits.items():
        if len(ds) != manifest["splits"][split]["rows"]:
            raise ShardError(f"The {split} shards in {data_dir} hold {len(ds)} rows, "
                             f"the manifest says {manifest['splits'][split]['rows']}")
    return DatasetDict(splits)
