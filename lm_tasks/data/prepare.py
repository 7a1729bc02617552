"""The data stage: load the configured source, clean it, split it, save it.

Output folder (`paths.data_dir`):
    dataset/      a `DatasetDict` (train, validation) saved with `save_to_disk`
    stats.json    rows and bytes per split, rows in/out of every cleaning step
"""

from __future__ import annotations

import logging
from pathlib import Path

from datasets import DatasetDict, load_from_disk

from lm_tasks.artifacts import atomic_path, files_digest, write_json
from lm_tasks.config import DataConfig
from lm_tasks.data.cleaning import clean_dataset
from lm_tasks.data.sources import EmptyDataError, load_raw

log = logging.getLogger(__name__)


def prepare_data(cfg: DataConfig, out_dir: str | Path, seed: int) -> dict:
    """Run the data stage; return its statistics (also written to stats.json)."""
    out_dir = Path(out_dir)
    raw = load_raw(cfg)
    cleaned, cleaning = {}, {}
    for split, ds in raw.items():
        _require_rows(len(ds), f"The {split} data from source '{cfg.name}' is empty")
        cleaned[split], cleaning[split] = clean_dataset(ds, cfg.cleaning, cfg.num_proc)
        _require_rows(len(cleaned[split]), _all_removed(split, cleaning[split]))
    if "validation" not in cleaned:
        cleaned = _split_off_validation(cleaned["train"], cfg.val_ratio, seed)

    dataset = DatasetDict(cleaned)
    with atomic_path(out_dir / "dataset", is_dir=True) as tmp:
        dataset.save_to_disk(str(tmp))
    stats = {
        "source": cfg.name,
        "splits": {
            split: {"rows": len(ds), "bytes": sum(len(t.encode("utf-8")) for t in ds["text"])}
            for split, ds in dataset.items()
        },
        "cleaning": cleaning,
        "digest": dataset_digest(out_dir),
    }
    write_json(out_dir / "stats.json", stats)
    log.info("data: %s", {k: v["rows"] for k, v in stats["splits"].items()})
    return stats


def load_prepared(data_dir: str | Path) -> DatasetDict:
    path = Path(data_dir) / "dataset"
    if not (path / "dataset_dict.json").exists():
        raise FileNotFoundError(
            f"No prepared dataset at {path}. Run the data stage first "
            "(python -m flows.data, with the same name= and paths overrides)."
        )
    return load_from_disk(str(path))


def dataset_digest(data_dir: str | Path) -> str:
    """Content digest of the saved dataset (its Arrow files, not its paths)."""
    root = Path(data_dir) / "dataset"
    return files_digest(list(root.rglob("*.arrow")), root)


def _split_off_validation(train, val_ratio: float, seed: int) -> dict:
    _require_rows(
        len(train) - 1,
        f"Only {len(train)} row is left after cleaning: at least 2 are needed to split off validation",
    )
    n_val = min(max(1, round(len(train) * val_ratio)), len(train) - 1)
    parts = train.train_test_split(test_size=n_val, seed=seed, shuffle=True)
    return {"train": parts["train"], "validation": parts["test"]}


def _all_removed(split: str, steps: list[dict]) -> str:
    trail = ", ".join(f"{s['step']} {s['rows_in']} -> {s['rows_out']}" for s in steps)
    return (
        f"Cleaning removed every row of the {split} data ({trail}). "
        "Check data.text_column and data.cleaning (min_chars, max_chars)."
    )


def _require_rows(n: int, message: str) -> None:
    if n <= 0:
        raise EmptyDataError(message)
