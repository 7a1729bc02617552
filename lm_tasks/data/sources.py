"""Load raw text from the configured source: embedded, a Hub dataset, or local files.

Every source returns a `DatasetDict` with a "train" split and, when the source
provides one, a "validation" split, each with three columns:

    text     the raw text of one row
    source   where it came from: a file path, `hub:<name>[/<config>]:<split>`, `embedded:...`
    row      its place there: the first line (1-based) of a txt paragraph or jsonl/csv
             record, the row index of a parquet file or Hub split

Local files are read by streaming readers (one record at a time, never a whole file
unless `txt_sample_by=document`), so errors can name the file and line:
- txt: decoded as UTF-8 with invalid bytes replaced by U+FFFD (normalisation then
  removes them and counts the rows); a leading BOM is dropped; CRLF, CR and LF all
  end a line.
- jsonl: a line that is not valid JSON, or a record without the text field, is an
  error naming the file and line. Empty lines are skipped. A .json file holding one
  JSON array is read whole; its rows are numbered by record (1-based).
- csv, parquet: a missing text column is an error naming the file and its columns.
`max_rows` / `max_bytes` stop reading early; with `streaming=true` a Hub dataset is
streamed, so only what is taken is downloaded.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

from datasets import Dataset, DatasetDict, Features, Value, load_dataset
from datasets.exceptions import DatasetGenerationError

from lm_tasks.config import DataConfig
from lm_tasks.data.embedded import embedded_corpus
from lm_tasks.data.files import DataSourceError, expand_files

FEATURES = Features({"text": Value("string"), "source": Value("string"), "row": Value("int64")})
READERS = (".txt", ".jsonl", ".json", ".csv", ".parquet")


class EmptyDataError(DataSourceError, ValueError):
    """No rows are left to train or validate on."""


class HubUnreachableError(DataSourceError, ConnectionError):
    """The Hub could not be reached (retried as an I/O error by the flows)."""


def load_raw(cfg: DataConfig, scratch_dir: str | Path) -> DatasetDict:
    """The raw rows of every split; Arrow files are written under `scratch_dir`."""
    if cfg.source == "embedded":
        splits = {"train": _generate(_read_embedded, {}, cfg, scratch_dir)}
    elif cfg.source == "hub":
        splits = _load_hub(cfg, scratch_dir)
    else:
        splits = {"train": _load_files(cfg, cfg.files, "data.files", scratch_dir)}
        if cfg.validation_files:
            splits["validation"] = _load_files(cfg, cfg.validation_files, "data.validation_files", scratch_dir)
    return DatasetDict(splits)


def _generate(reader, kwargs: dict, cfg: DataConfig, scratch_dir: str | Path) -> Dataset:
    """A Dataset of reader(**kwargs)'s records, cut at max_rows / max_bytes."""
    try:
        return Dataset.from_generator(_limited, features=FEATURES, cache_dir=str(scratch_dir),
                                      gen_kwargs={"reader": reader, "kwargs": kwargs, "max_rows": cfg.max_rows,
                                                  "max_bytes": cfg.max_bytes})
    except DatasetGenerationError as err:  # `datasets` wraps what the reader raised
        if isinstance(err.__cause__, DataSourceError):
            raise err.__cause__ from None
        raise
    except ValueError as err:
        if "corresponds to no data" not in str(err):  # what `datasets` says of a generator yielding nothing
            raise
        return Dataset.from_dict({name: [] for name in FEATURES}, features=FEATURES)


def _limited(reader, kwargs: dict, max_rows: int | None, max_bytes: int | None) -> Iterator[dict]:
    rows = n_bytes = 0
    for record in reader(**kwargs):
        if (max_rows is not None and rows >= max_rows) or (max_bytes is not None and n_bytes >= max_bytes):
            return
        rows += 1
        n_bytes += len(record["text"].encode("utf-8", errors="replace"))
        yield record


# --- embedded ------------------------------------------------------------------------


def _read_embedded() -> Iterator[dict]:
    for i, text in enumerate(embedded_corpus()["text"]):
        yield {"text": text, "source": "embedded:pydoc_data.topics", "row": i}


# --- the Hub -------------------------------------------------------------------------


def _load_hub(cfg: DataConfig, scratch_dir: str | Path) -> dict[str, Dataset]:
    label = f"'{cfg.hub_name}'" + (f" (config '{cfg.hub_config}')" if cfg.hub_config else "")
    names = {"train": cfg.train_split, **({"validation": cfg.validation_split} if cfg.validation_split else {})}
    try:
        loaded = load_dataset(cfg.hub_name, cfg.hub_config, revision=cfg.hub_revision, streaming=cfg.streaming)
    except Exception as err:  # datasets raises many types for "unreachable" and "missing"
        offline = isinstance(err, ConnectionError) or "offline" in str(err).lower()
        kind = HubUnreachableError if offline else DataSourceError
        raise kind(
            f"Could not load the Hub dataset {label}: {type(err).__name__}: {err}\n"
            "Without network access, download the files elsewhere and use the local-files "
            "source instead: data=local data.files=[path/to/train.jsonl] data.text_column=<column>"
        ) from err
    splits = {}
    for split, name in names.items():
        if name not in loaded:
            raise DataSourceError(f"Hub dataset {label} has no split '{name}'; it has {sorted(loaded)}")
        columns = loaded[name].column_names  # None for some streamed datasets until read
        if columns is not None and cfg.text_column not in columns:
            raise DataSourceError(f"Hub dataset {label} split '{name}' has no column '{cfg.text_column}' "
                                  f"(columns: {columns}); set data.text_column to the column that holds the text")
        source = f"hub:{cfg.hub_name}" + (f"/{cfg.hub_config}" if cfg.hub_config else "") + f":{name}"
        splits[split] = _generate(_read_rows, {"rows": loaded[name], "column": cfg.text_column, "source": source},
                                  cfg, scratch_dir)
    return splits


def _read_rows(rows, column: str, source: str) -> Iterator[dict]:
    for i, record in enumerate(rows):
        if column not in record:
            raise DataSourceError(f"{source} row {i} has no column '{column}' (columns: {sorted(record)})")
        yield {"text": record[column] or "", "source": source, "row": i}


# --- local files ---------------------------------------------------------------------


def _load_files(cfg: DataConfig, patterns: list[str], key: str, scratch_dir: str | Path) -> Dataset:
    files = expand_files(patterns, key)
    unknown = sorted({Path(f).suffix.lower() for f in files} - set(READERS))
    if unknown:
        raise DataSourceError(f"Unsupported file type {unknown} in {key}; local files must be one of "
                              f"{list(READERS)}")
    kwargs = {"files": files, "column": cfg.text_column, "sample_by": cfg.txt_sample_by}
    return _generate(_read_files, kwargs, cfg, scratch_dir)


def _read_files(files: list[str], column: str, sample_by: str) -> Iterator[dict]:
    for path in files:
        suffix = Path(path).suffix.lower()
        if suffix == ".txt":
            yield from _read_txt(path, sample_by)
        elif suffix in (".jsonl", ".json"):
            yield from _read_json(path, column)
        elif suffix == ".csv":
            yield from _read_csv(path, column)
        else:
            yield from _read_parquet(path, column)


def _read_txt(path: str, sample_by: str) -> Iterator[dict]:
    # newline="" splits at \n, \r\n and \r without translating (normalisation does that);
    # utf-8-sig drops a leading BOM; invalid bytes become U+FFFD.
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        if sample_by == "document":
            yield {"text": f.read(), "source": path, "row": 1}
            return
        paragraph: list[str] = []
        start = 0
        for number, line in enumerate(f, start=1):
            if sample_by == "line":
                if line.strip():
                    yield {"text": line, "source": path, "row": number}
                continue
            if line.strip():
                start = start or number
                paragraph.append(line)
            elif paragraph:
                yield {"text": "".join(paragraph), "source": path, "row": start}
                paragraph, start = [], 0
        if paragraph:
            yield {"text": "".join(paragraph), "source": path, "row": start}


def _read_json(path: str, column: str) -> Iterator[dict]:
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        head = f.read(1)
        while head.isspace():
            head = f.read(1)
        f.seek(0)
        if head == "[":  # a JSON array of records
            try:
                records = json.load(f)
            except json.JSONDecodeError as err:
                raise DataSourceError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
            for number, record in enumerate(records, start=1):
                yield {"text": _field(record, column, path, f"record {number}"), "source": path, "row": number}
            return
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataSourceError(f"{path}:{number}: not valid JSON ({err.msg} at column {err.colno}); "
                                      "fix or remove that line") from None
            yield {"text": _field(record, column, path, f"line {number}"), "source": path, "row": number}


def _field(record, column: str, path: str, where: str) -> str:
    if not isinstance(record, dict) or column not in record:
        found = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise DataSourceError(f"{path} {where} has no column '{column}' (columns: {found}); "
                              "set data.text_column to the column that holds the text")
    value = record[column]
    return value if isinstance(value, str) else "" if value is None else str(value)


def _read_csv(path: str, column: str) -> Iterator[dict]:
    csv.field_size_limit(1 << 30)  # long documents are rows too
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        reader = csv.DictReader(f)
        if column not in (reader.fieldnames or []):
            raise DataSourceError(f"{path} has no column '{column}' (columns: {reader.fieldnames}); "
                                  "set data.text_column to the column that holds the text")
        first_line = reader.line_num + 1  # a quoted field may span lines: keep where the record starts
        for record in reader:
            yield {"text": record[column] or "", "source": path, "row": first_line}
            first_line = reader.line_num + 1


def _read_parquet(path: str, column: str) -> Iterator[dict]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as err:
        raise DataSourceError(f"Could not read {path} as parquet: {type(err).__name__}: {err}") from err
    if column not in parquet.schema_arrow.names:
        raise DataSourceError(f"{path} has no column '{column}' (columns: {parquet.schema_arrow.names}); "
                              "set data.text_column to the column that holds the text")
    row = 0
    for batch in parquet.iter_batches(columns=[column], batch_size=4096):
        for text in batch.column(0).to_pylist():
            yield {"text": text if isinstance(text, str) else "" if text is None else str(text),
                   "source": path, "row": row}
            row += 1
