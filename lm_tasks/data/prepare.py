"""The data stage: read the configured source, clean every split, make the validation
split, decontaminate the training rows, write parquet shards and the data report.

Output folder (`paths.data_dir`):
    shards/, manifest.json   the cleaned splits (lm_tasks/data/shards.py)
    report.json, report.md, dropped_samples.jsonl, lengths.png   (lm_tasks/data/report.py)

The manifest is written last: a folder without one (an interrupted run) is not data.

The per-row passes run in `data.num_proc` processes here, or with `data.executor=dask`
partitioned over a Dask cluster (lm_tasks/data/mapping.py), local files read one file per
partition; the output is the same either way.

Every split must keep at least one row: an empty source, or cleaning that removes
everything, is an error saying which split and which steps, never an empty split.
"""

from __future__ import annotations

import logging
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict

from lm_tasks.config import DataConfig
from lm_tasks.data.cleaning import (StepReport, clean_split, clean_text, column_values, decontaminate,
                                    eval_text_hashes)
from lm_tasks.data.columns import column
from lm_tasks.data.decontamination import NgramIndex
from lm_tasks.data.mapping import DaskMap, LocalMap, dask_client
from lm_tasks.data.mix import add_task_text, mix_validation, weigh
from lm_tasks.data.report import build_report, write_report
from lm_tasks.artifacts import write_json
from lm_tasks.data.shards import MANIFEST, load_shards, shard_manifest
from lm_tasks.data.sources import EmptyDataError, load_raw

log = logging.getLogger(__name__)


def prepare_data(cfg: DataConfig, out_dir: str | Path, seed: int, eval_texts: dict[str, list[str]] | None = None,
                 task_texts: dict[str, list[str]] | None = None) -> dict:
    """Run the data stage; return the report (also written to report.json).

    `eval_texts`: evaluation sets (name -> texts) besides the validation split that the
    training rows are decontaminated against (the fine-tuning tasks' evaluation splits).
    `task_texts`: documents (name -> texts) that join the training rows, weighed by
    `data.mix.tasks` (the fine-tuning tasks' training text: lm_tasks/data/mix.py).
    """
    out_dir = Path(out_dir)
    (out_dir / MANIFEST).unlink(missing_ok=True)  # written last: its presence means the output is whole
    scratch = out_dir / ".scratch"  # Arrow files of the intermediate steps; removed at the end
    try:
        with row_mapper(cfg, scratch / "partitions") as mapper:
            manifest, report = _prepare(cfg, out_dir, scratch, seed, eval_texts, task_texts or {}, mapper)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("data: %s", {k: v["rows"] for k, v in manifest["splits"].items()})
    return report


@contextmanager
def row_mapper(cfg: DataConfig, folder: Path) -> Iterator:
    """Where the per-row passes run (`data.executor`): here in `data.num_proc` processes, or on
    a Dask cluster (`data.dask_address`, the cluster this runs on, else a local one)."""
    if cfg.executor == "local":
        yield LocalMap(cfg.num_proc)
        return
    with dask_client(cfg.dask_address, cfg.num_proc) as client:
        workers = len(client.scheduler_info().get("workers", {})) or 1
        yield DaskMap(client, cfg.partitions or 2 * workers, folder)


def _prepare(cfg: DataConfig, out_dir: Path, scratch: Path, seed: int, eval_texts: dict[str, list[str]] | None,
             task_texts: dict[str, list[str]], mapper) -> tuple[dict, dict]:
    raw, reads = load_raw(cfg, scratch, mapper)
    if cfg.mix.tasks > 0:
        raw["train"] = add_task_text(raw["train"], task_texts, reads["train"])
    cleaned, steps, lengths = {}, {}, {}
    for split, ds in raw.items():
        _require_rows(len(ds), f"The {split} data from source '{cfg.name}' is empty{_where(cfg, split)}")
        lengths[split] = {"read": _text_bytes(ds)}
        cleaned[split], steps[split] = clean_split(ds, cfg.cleaning, mapper)
        steps[split].insert(0, reads[split])  # records skipped while reading (too long to read)
        _require_rows(len(cleaned[split]), _all_removed(split, steps[split]))
    if "validation" not in cleaned:
        cleaned = _split_off_validation(cleaned["train"], cfg.val_ratio, seed)
    if (cfg.mix.corpus, cfg.mix.tasks) != (1.0, 0.0):
        cleaned["train"], cleaned["validation"], report = mix_validation(
            cleaned["train"], cleaned["validation"], cfg.mix, cfg.val_ratio, seed)
        steps.setdefault("validation", []).append(report)
        _require_rows(len(cleaned["validation"]), "data.mix left no validation row: set data.mix.corpus above 0 "
                      "or data.mix.tasks above 0 with task training text")
    if cfg.cleaning.decontamination.enabled:
        cleaned["train"], report = _decontaminate(cleaned, eval_texts or {}, cfg, mapper)
        steps["train"].append(report)
        _require_rows(len(cleaned["train"]), _all_removed("train", steps["train"]))
    if (cfg.mix.corpus, cfg.mix.tasks) != (1.0, 0.0):
        cleaned["train"], report = weigh(cleaned["train"], cfg.mix, seed)
        steps["train"].append(report)
        _require_rows(len(cleaned["train"]), "data.mix left no training row: every row kept has a weight of 0 "
                      f"(mix: {report.details})")
    for split, ds in cleaned.items():
        lengths.setdefault(split, {})["kept"] = column_values(ds, "n_bytes")
    manifest = shard_manifest(DatasetDict(cleaned), out_dir, cfg.shard_rows)
    report = build_report(cfg.name, steps, manifest)
    write_report(report, steps, lengths, out_dir)
    write_json(out_dir / MANIFEST, manifest, sort_keys=False)
    return manifest, report


def load_prepared(data_dir: str | Path) -> DatasetDict:
    """The cleaned splits of a data stage output, checked against its manifest."""
    return load_shards(data_dir)


def _decontaminate(cleaned: dict[str, Dataset], eval_texts: dict[str, list[str]],
                   cfg: DataConfig, mapper) -> tuple[Dataset, StepReport]:
    validation = cleaned["validation"]

    def texts():  # the validation split in batches, then the tasks' evaluation texts
        for batch in validation.select_columns("text").iter(batch_size=1000):
            yield from batch["text"]
        for task_texts in eval_texts.values():  # in the form the training rows now have
            yield from (clean_text(text, cfg.cleaning) for text in task_texts)

    index = NgramIndex(texts(), n=cfg.cleaning.decontamination.ngram)
    train, report = decontaminate(cleaned["train"], index, eval_text_hashes(texts()), cfg.cleaning, mapper)
    report.details["eval_sets"] = {"validation": len(validation), **{k: len(v) for k, v in eval_texts.items()}}
    return train, report


def _text_bytes(ds: Dataset) -> np.ndarray:
    return pc.binary_length(column(ds, "text")).to_numpy(zero_copy_only=False)


def _split_off_validation(train: Dataset, val_ratio: float, seed: int) -> dict:
    _require_rows(
        len(train) - 1,
        f"Only {len(train)} row is left after cleaning: at least 2 are needed to split off validation",
    )
    n_val = min(max(1, round(len(train) * val_ratio)), len(train) - 1)
    parts = train.train_test_split(test_size=n_val, seed=seed, shuffle=True)
    return {"train": parts["train"], "validation": parts["test"]}


def _where(cfg: DataConfig, split: str) -> str:
    files = (cfg.validation_files if split == "validation" else cfg.files) if cfg.source == "local" else []
    return f": {', '.join(files)}" if files else ""


def _all_removed(split: str, steps: list[StepReport]) -> str:
    trail = ", ".join(f"{s.step} {s.rows_in} -> {s.rows_out}" for s in steps)
    reasons = sorted({reason for s in steps for reason in s.dropped})
    return (
        f"Cleaning removed every row of the {split} data ({trail}; reasons: {', '.join(reasons)}). "
        "Check data.text_column and data.cleaning (min_chars, max_chars, quality, languages)."
    )


def _require_rows(n: int, message: str) -> None:
    if n <= 0:
        raise EmptyDataError(message)
