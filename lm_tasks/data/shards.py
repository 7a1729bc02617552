"""Cleaned data on disk: parquet shards plus a manifest that later stages trust.

    shards/<split>-00000.parquet ...   columns text, source, row, n_bytes
    manifest.json                     per shard: split, name, rows, bytes (UTF-8 text),
                                      sha256; per split: rows, bytes; the dataset digest

The folder is written aside and renamed into place, so a reader sees every shard or
none. `load_shards` checks each shard's rows and digest against the manifest before
handing the splits on: a truncated or swapped shard is an error naming it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from datasets import Dataset, DatasetDict, concatenate_datasets

from lm_tasks.artifacts import atomic_path, file_digest, read_json, write_json

MANIFEST = "manifest.json"
SHARDS = "shards"


class ShardError(RuntimeError):
    """The cleaned data on disk does not match its manifest."""


def write_shards(dataset: DatasetDict, out_dir: str | Path, shard_rows: int) -> dict:
    """Write every split as parquet shards of at most `shard_rows` rows; return the manifest."""
    out_dir = Path(out_dir)
    shards = []
    with atomic_path(out_dir / SHARDS, is_dir=True) as tmp:
        tmp.mkdir(parents=True, exist_ok=True)
        for split, ds in dataset.items():
            count = max(1, -(-len(ds) // shard_rows))
            for i in range(count):
                part = ds.select(range(i * shard_rows, min((i + 1) * shard_rows, len(ds))))
                name = f"{split}-{i:05d}.parquet"
                part.to_parquet(str(tmp / name))
                shards.append({"split": split, "name": name, "rows": len(part),
                               "bytes": int(sum(part["n_bytes"])), "sha256": file_digest(tmp / name)})
    splits = {split: {"rows": sum(s["rows"] for s in shards if s["split"] == split),
                      "bytes": sum(s["bytes"] for s in shards if s["split"] == split),
                      "shards": sum(s["split"] == split for s in shards)} for split in dataset}
    digest = hashlib.sha256("".join(f"{s['name']}:{s['sha256']}" for s in shards).encode()).hexdigest()
    manifest = {"format": "parquet", "shards": shards, "splits": splits, "digest": digest}
    write_json(out_dir / MANIFEST, manifest, sort_keys=False)
    return manifest


def read_manifest(data_dir: str | Path) -> dict:
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"No cleaned data at {data_dir} ({MANIFEST} missing). Run the data stage first "
            "(python -m flows.data, with the same overrides)."
        )
    return read_json(path)


def load_shards(data_dir: str | Path, verify: bool = True) -> DatasetDict:
    """The cleaned splits, each shard checked against the manifest."""
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    splits: dict[str, list[Dataset]] = {}
    for shard in manifest["shards"]:
        path = data_dir / SHARDS / shard["name"]
        if not path.is_file():
            raise ShardError(f"Shard {path} listed in {data_dir / MANIFEST} is missing; re-run the data stage")
        if verify and file_digest(path) != shard["sha256"]:
            raise ShardError(f"Shard {path} does not match its digest in {data_dir / MANIFEST} "
                             "(changed or truncated); re-run the data stage (cache.refresh=data)")
        part = Dataset.from_parquet(str(path), cache_dir=str(data_dir / ".cache"))
        if len(part) != shard["rows"]:
            raise ShardError(f"Shard {path} has {len(part)} rows, its manifest says {shard['rows']}")
        splits.setdefault(shard["split"], []).append(part)
    return DatasetDict({split: concatenate_datasets(parts) for split, parts in splits.items()})
