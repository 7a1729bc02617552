"""Task datasets by config alone: embedded, a Hub dataset, or local files, mapped onto
the task's fields (`TASK_FIELDS`) through `data.columns`, split into train/validation.

Nested source columns are addressed with dots (`translation.en`). Rows that cannot be
used are handled by one documented rule per task and counted (see `validate_rows`).

Local task files are not trusted: before `datasets` reads them, a bounded scan
(lm_tasks/data/bounded.py) refuses a file holding a record longer than
`TASK_MAX_RECORD_BYTES`, and a JSON array file longer than that (`datasets` reads a JSON
array whole; JSON lines are read in chunks).
"""

from __future__ import annotations

import os
import random
from collections import Counter
from pathlib import Path

from datasets import ClassLabel, Dataset, DatasetDict, concatenate_datasets, load_dataset

from lm_tasks.config import TASK_FIELDS, TaskConfig
from lm_tasks.data.bounded import Oversized, csv_records, lines, starts_json_array
from lm_tasks.data.sources import DataSourceError, EmptyDataError, expand_files
from lm_tasks.tasks.embedded import embedded_task_dataset

# File extension -> `datasets` packaged builder.
BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
TASK_MAX_RECORD_BYTES = 16 << 20  # as the data stage's default data.max_record_bytes


def load_task_data(cfg: TaskConfig, seed: int, fold: tuple[int, int] | None = None) -> tuple[DatasetDict, dict]:
    """Train/validation with the task's fields, plus facts (label names, skipped rows).

    With `fold=(i, k)` (cross-validation) the train split is cut into k folds (`fold_ids`):
    fold i becomes a third split, `held_out`, train keeps the other k-1, validation is unchanged.
    """
    d = cfg.data
    if d.source == "embedded":
        raw, label = embedded_task_dataset(cfg.task, seed), "embedded"
    elif d.source == "hub":
        raw, label = _load_hub(cfg), f"Hub dataset '{d.hub_name}'"
    else:
        raw, label = _load_local(cfg), ", ".join(d.train_files)
    if d.max_rows is not None:
        raw = {k: v.select(range(min(d.max_rows, len(v)))) for k, v in raw.items()}
    if "validation" not in raw:
        raw = {**raw, **split_off_validation(raw["train"], d.val_ratio, seed, d.split_by, label)}
    splits = {name: _map_columns(ds, cfg, label) for name, ds in raw.items()}
    info = {"source": label}
    if cfg.task == "classification":
        splits, info["label_names"] = _encode_labels(splits, cfg)
    if fold is not None:  # after the labels are named: every fold model gets the final model's label ids
        index, count = fold
        what = f"train rows in {label}" if d.split_by is None else f"'{d.split_by}' groups in train of {label}"
        ids = fold_ids(_group_keys(raw["train"], d.split_by, label), count, seed, what)
        train = splits["train"]
        splits["held_out"] = train.select([row for row, f in enumerate(ids) if f == index])
        splits["train"] = train.select([row for row, f in enumerate(ids) if f != index])
    dataset, info["skipped"] = {}, {}
    for name, ds in splits.items():
        kept = ds.filter(_has_text, fn_kwargs={"fields": TEXT_FIELDS[cfg.task]})
        info["skipped"][name] = len(ds) - len(kept)
        if len(kept) == 0:
            raise EmptyDataError(f"The {name} split of {cfg.task} data from {label} has no usable rows")
        dataset[name] = kept
    return DatasetDict(dataset), info


def scored_split(dataset: DatasetDict) -> str:
    """The split the evaluate stage scores: test where one is configured, else validation."""
    return "test" if "test" in dataset else "validation"


def evaluation_texts(cfg: TaskConfig, seed: int) -> list[str]:
    """Every text of the task's held-out splits (validation, and test where configured), for
    decontaminating the pretraining data against them."""
    dataset = load_task_data(cfg, seed)[0]
    texts = []
    for split in (name for name in ("validation", "test") if name in dataset):
        for field in TEXT_FIELDS[cfg.task]:
            texts += [t for t in dataset[split][field] if isinstance(t, str) and t]
    return texts


def training_texts(cfg: TaskConfig, seed: int) -> list[str]:
    """The train split's examples as pretraining documents (domain-adaptive pretraining,
    `data.mix.tasks`): each example's text fields joined by a line break (a QA context and
    its question; a summarisation or translation source and its target)."""
    train = load_task_data(cfg, seed)[0]["train"]
    columns = [train[field] for field in TEXT_FIELDS[cfg.task]]
    return ["\n".join(parts) for parts in zip(*columns)]


def split_off_validation(train: Dataset, val_ratio: float, seed: int, split_by: str | None,
                         label: str) -> dict:
    """A seeded split; with `split_by`, whole groups (e.g. SQuAD articles) go to one side."""
    if split_by is None:
        parts = train.train_test_split(test_size=val_ratio, seed=seed, shuffle=True)
        return {"train": parts["train"], "validation": parts["test"]}
    keys = _group_keys(train, split_by, label)
    groups = shuffled_groups(keys, seed)
    if len(groups) < 2:
        raise EmptyDataError(f"{label}: split_by='{split_by}' needs at least 2 groups, found {len(groups)}")
    held_out = set(groups[: max(1, round(len(groups) * val_ratio))])
    return {"train": train.select([i for i, k in enumerate(keys) if k not in held_out]),
            "validation": train.select([i for i, k in enumerate(keys) if k in held_out])}


def fold_ids(keys: list, k: int, seed: int, what: str = "rows") -> list[int]:
    """Each row's fold (0..k-1) for k-fold cross-validation, rows given by their group key.

    The groups come in the seeded order of `shuffled_groups`, each whole into the fold with
    the fewest rows so far: no group straddles two folds, and folds are near equal in rows
    (with one row per group, a shuffled round robin).
    """
    groups = shuffled_groups(keys, seed)
    if k > len(groups):
        raise EmptyDataError(f"{k} cross-validation folds need at least {k} {what}, found {len(groups)}; "
                             "lower cv_folds")
    sizes, rows, fold_of = Counter(keys), [0] * k, {}
    for group in groups:
        fold_of[group] = rows.index(min(rows))
        rows[fold_of[group]] += sizes[group]
    return [fold_of[key] for key in keys]


def shuffled_groups(keys: list, seed: int) -> list:
    """The distinct keys in a seeded random order (sorted first, so it depends on the seed alone)."""
    groups = sorted(set(keys))
    random.Random(seed).shuffle(groups)
    return groups


def _group_keys(train: Dataset, split_by: str | None, label: str) -> list:
    """What keeps rows together: their `split_by` value, else each row is its own group."""
    if split_by is None:
        return list(range(len(train)))
    if split_by not in train.column_names:
        raise DataSourceError(f"{label} has no column '{split_by}' to split by (columns: {train.column_names})")
    return list(train[split_by])


TEXT_FIELDS = {"classification": ("text",), "qa": ("context", "question"),
               "summarization": ("source", "target"), "translation": ("source", "target")}


def _has_text(row: dict, fields: tuple[str, ...]) -> bool:
    """Rows with an empty text field are skipped (and counted): there is nothing to learn from."""
    return all(isinstance(row[f], str) and row[f].strip() for f in fields)


def _load_hub(cfg: TaskConfig) -> DatasetDict:
    d = cfg.data
    try:
        loaded = load_dataset(d.hub_name, d.hub_config)
    except Exception as err:
        raise DataSourceError(
            f"Could not load the Hub dataset '{d.hub_name}' for {cfg.task}: {type(err).__name__}: {err}\n"
            f"Without network access use local files: finetune.{cfg.task}.data.source=local "
            f"finetune.{cfg.task}.data.train_files=[path/to/train.jsonl]"
        ) from err
    wanted = {"train": d.train_split, "validation": d.validation_split, "test": d.test_split}
    splits = {}
    for name, split in wanted.items():
        if split is None:
            continue
        if split not in loaded:
            raise DataSourceError(f"Hub dataset '{d.hub_name}' has no split '{split}'; it has {sorted(loaded)}")
        splits[name] = loaded[split]
    return DatasetDict(splits)


def _load_local(cfg: TaskConfig) -> DatasetDict:
    d = cfg.data
    if not d.train_files:
        raise DataSourceError(f"finetune.{cfg.task}.data.source=local needs train_files=[...]")
    files = {"train": expand_files(d.train_files, f"finetune.{cfg.task}.data.train_files")}
    if d.validation_files:
        files["validation"] = expand_files(d.validation_files, f"finetune.{cfg.task}.data.validation_files")
    if d.test_files:
        files["test"] = expand_files(d.test_files, f"finetune.{cfg.task}.data.test_files")
    builder = builder_for(files)
    for path in (f for group in files.values() for f in group):
        check_record_sizes(path, TASK_MAX_RECORD_BYTES)
    needed = sorted({column.split(".")[0] for column in d.columns.values()} | ({d.split_by} if d.split_by else set()))
    return DatasetDict({split: _read_split(builder, paths, needed, cfg) for split, paths in files.items()})


def _read_split(builder: str, paths: list[str], needed: list[str], cfg: TaskConfig) -> Dataset:
    """One split's files. Each split is read on its own, so a test file with a column the
    train file lacks is fine; when the files of one split disagree, each file is read alone
    and only the columns the task uses (`needed`) must agree: a file missing one, or holding
    it with another type, is an error naming the file and the column."""
    try:
        return load_dataset(builder, data_files={"rows": paths}, split="rows")
    except Exception as err:
        if len(paths) == 1:
            raise DataSourceError(f"Could not read {paths[0]} as {builder}: {type(err).__name__}: {err}") from err
    parts = []
    for path in paths:
        try:
            part = load_dataset(builder, data_files={"rows": [path]}, split="rows")
        except Exception as err:
            raise DataSourceError(f"Could not read {path} as {builder}: {type(err).__name__}: {err}") from err
        missing = [column for column in needed if column not in part.column_names]
        if missing:
            raise DataSourceError(f"{path} has no column '{missing[0]}', which finetune.{cfg.task}.data uses "
                                  f"(its columns: {part.column_names}; {paths[0]} has the columns read first)")
        part = part.select_columns(needed)
        if parts and part.features != parts[0].features:
            column = next(c for c in needed if part.features[c] != parts[0].features[c])
            raise DataSourceError(f"Column '{column}' of {path} holds {part.features[column]}, but in {paths[0]} "
                                  f"{parts[0].features[column]}; one split's files must agree on the columns used")
        parts.append(part)
    return concatenate_datasets(parts)


def check_record_sizes(path: str, limit: int) -> None:
    """Refuse a task file with a record longer than `limit` bytes, naming its line."""
    if Path(path).suffix.lower() == ".parquet":
        return _check_parquet(path, limit)
    with open(path, "rb") as f:
        is_csv = Path(path).suffix.lower() == ".csv"
        array = not is_csv and starts_json_array(f)
        f.seek(0)
        if is_csv:
            records = csv_records(f, limit)
        elif array:
            size = os.fstat(f.fileno()).st_size
            if size > limit:
                raise DataSourceError(f"{path} is a JSON array of {size:,} bytes, which is read whole; task files "
                                      f"over {limit:,} bytes must be JSON lines (one record per line)")
            return
        else:
            records = ((None if isinstance(line, Oversized) else line, n, number)
                       for number, (line, n) in enumerate(lines(f, limit), start=1))
        for data, size, line in records:
            if data is None:
                raise DataSourceError(f"{path}:{line}: a record of {size:,} bytes is longer than the {limit:,} bytes "
                                      "a task record may have; remove it or fix the file")


def _check_parquet(path: str, limit: int) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    texts = [field.name for field in parquet.schema_arrow
             if pa.types.is_string(field.type) or pa.types.is_large_string(field.type)]
    if not texts:
        return
    row = 0
    for batch in parquet.iter_batches(columns=texts, batch_size=256):
        for column in batch.columns:
            longest = pc.max(pc.binary_length(column)).as_py() or 0
            if longest > limit:
                raise DataSourceError(f"{path}: a cell in rows {row}..{row + len(batch) - 1} has {longest:,} bytes, "
                                      f"more than the {limit:,} bytes a task record may have")
        row += len(batch)


def builder_for(splits: dict[str, list[str]]) -> str:
    suffixes = {Path(f).suffix.lower() for group in splits.values() for f in group}
    unknown = suffixes - set(BUILDERS)
    if unknown:
        raise DataSourceError(f"Unsupported file type {sorted(unknown)}; task files must be one of {sorted(BUILDERS)}")
    builders = {BUILDERS[s] for s in suffixes}
    if len(builders) > 1:
        raise DataSourceError(f"Task files mix formats {sorted(suffixes)}; use one format per task")
    return builders.pop()


def _map_columns(ds: Dataset, cfg: TaskConfig, label: str) -> Dataset:
    mapping = cfg.data.columns
    if any("." in column for column in mapping.values()):
        ds = ds.flatten()  # struct columns become dotted columns: translation.en
    missing = {field: column for field, column in mapping.items() if column not in ds.column_names}
    if missing:
        field, column = next(iter(missing.items()))
        raise DataSourceError(
            f"{label} has no column '{column}' for the {cfg.task} field '{field}' "
            f"(columns: {ds.column_names}); set finetune.{cfg.task}.data.columns.{field}"
        )
    fields = TASK_FIELDS[cfg.task]
    ds = ds.select_columns([mapping[f] for f in fields])
    return ds.rename_columns({mapping[f]: f for f in fields if mapping[f] != f})


def _encode_labels(splits: dict, cfg: TaskConfig) -> tuple[dict, list[str]]:
    """Labels become ids into label_names; a label outside the set is an error naming the row."""
    feature = splits["train"].features["label"]
    if isinstance(feature, ClassLabel):
        return splits, list(cfg.data.label_names or feature.names)
    values = sorted({v for v in splits["train"]["label"] if v is not None}, key=str)
    names = list(cfg.data.label_names) if cfg.data.label_names else [str(v) for v in values]
    # Integer labels index label_names when given; any other value is looked up by name.
    by_name = {name: i for i, name in enumerate(names)}

    def to_id(value, row: int, split: str) -> int:
        if isinstance(value, int) and cfg.data.label_names and 0 <= value < len(names):
            return value
        if str(value) in by_name:
            return by_name[str(value)]
        raise DataSourceError(
            f"{split} row {row}: label {value!r} is not one of the labels {names} "
            f"(set finetune.{cfg.task}.data.label_names)"
        )

    encoded = {}
    for split, ds in splits.items():
        ids = [to_id(v, i, split) for i, v in enumerate(ds["label"])]
        encoded[split] = ds.remove_columns("label").add_column("label", ids)
    return encoded, names
