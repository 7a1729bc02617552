"""Load raw text from the configured source: embedded, a Hub dataset, or local files.

Every source returns a `DatasetDict` with a "train" split and, when the source
provides one, a "validation" split, each with a single "text" column.
"""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset

from lm_tasks.config import DataConfig
from lm_tasks.data.embedded import embedded_corpus
from lm_tasks.data.files import DataSourceError, expand_files

# File extension -> `datasets` packaged builder.
BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


class EmptyDataError(DataSourceError, ValueError):
    """No rows are left to train or validate on."""


class HubUnreachableError(DataSourceError, ConnectionError):
    """The Hub could not be reached (retried as an I/O error by the flows)."""


def load_raw(cfg: DataConfig) -> DatasetDict:
    if cfg.source == "embedded":
        raw = DatasetDict({"train": embedded_corpus()})
    elif cfg.source == "hub":
        raw = _load_hub(cfg)
    else:
        raw = _load_local(cfg)
    if cfg.max_rows is not None:
        raw = DatasetDict({k: v.select(range(min(cfg.max_rows, len(v)))) for k, v in raw.items()})
    return raw


def _load_hub(cfg: DataConfig) -> DatasetDict:
    label = f"'{cfg.hub_name}'" + (f" (config '{cfg.hub_config}')" if cfg.hub_config else "")
    try:
        loaded = load_dataset(cfg.hub_name, cfg.hub_config, revision=cfg.hub_revision)
    except Exception as err:  # datasets raises many types for "unreachable" and "missing"
        offline = isinstance(err, ConnectionError) or "offline" in str(err).lower()
        kind = HubUnreachableError if offline else DataSourceError
        raise kind(
            f"Could not load the Hub dataset {label}: {type(err).__name__}: {err}\n"
            "Without network access, download the files elsewhere and use the local-files "
            "source instead: data=local data.files=[path/to/train.jsonl] data.text_column=<column>"
        ) from err
    splits = {"train": _hub_split(loaded, cfg.train_split, label)}
    if cfg.validation_split:
        splits["validation"] = _hub_split(loaded, cfg.validation_split, label)
    return DatasetDict({k: _text_only(v, cfg.text_column, label) for k, v in splits.items()})


def _hub_split(loaded: DatasetDict, split: str, label: str) -> Dataset:
    if split not in loaded:
        raise DataSourceError(f"Hub dataset {label} has no split '{split}'; it has {sorted(loaded)}")
    return loaded[split]


def _load_local(cfg: DataConfig) -> DatasetDict:
    splits = {"train": expand_files(cfg.files, "data.files")}
    if cfg.validation_files:
        splits["validation"] = expand_files(cfg.validation_files, "data.validation_files")
    for split, files in splits.items():
        if all(Path(f).stat().st_size == 0 for f in files):
            raise EmptyDataError(f"The {split} data from source '{cfg.name}' is empty: {', '.join(files)}")
    builder = builder_for(splits)
    kwargs = {}
    if builder == "text":
        # Invalid UTF-8 bytes become U+FFFD here; cleaning then removes them (counted).
        kwargs = {"sample_by": cfg.txt_sample_by, "encoding_errors": "replace"}
    try:
        loaded = load_dataset(builder, data_files=splits, **kwargs)
    except Exception as err:
        files = ", ".join(f for group in splits.values() for f in group)
        raise DataSourceError(f"Could not read {files} as {builder}: {type(err).__name__}: {err}") from err
    label = ", ".join(splits["train"])
    return DatasetDict({k: _text_only(v, cfg.text_column, label) for k, v in loaded.items()})


def builder_for(splits: dict[str, list[str]]) -> str:
    suffixes = {Path(f).suffix.lower() for group in splits.values() for f in group}
    unknown = suffixes - set(BUILDERS)
    if unknown:
        raise DataSourceError(
            f"Unsupported file type {sorted(unknown)}; local files must be one of {sorted(BUILDERS)}"
        )
    builders = {BUILDERS[s] for s in suffixes}
    if len(builders) > 1:
        raise DataSourceError(f"Local files mix formats {sorted(suffixes)}; use one format per run")
    return builders.pop()


def _text_only(ds: Dataset, column: str, label: str) -> Dataset:
    if column not in ds.column_names:
        raise DataSourceError(
            f"{label} has no column '{column}' (columns: {ds.column_names}); "
            "set data.text_column to the column that holds the text"
        )
    ds = ds.select_columns([column])
    return ds.rename_column(column, "text") if column != "text" else ds
