"""A Dataset's columns and rows as Arrow data, in row order, without per-row Python and
without copying whole columns.

`datasets` reads the rows of a selection (`Dataset.select`, what every cleaning step's
drop makes) one by one when asked for a column or a batch as Arrow: about a second per
column of a million rows. Arrow's own `take` on a column of many chunks first joins the
chunks into one array: a copy of the whole column (the whole corpus, for the text) to
pick a few rows. `_take` picks rows chunk by chunk instead.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from datasets import Dataset


def column(ds: Dataset, name: str) -> pa.Array | pa.ChunkedArray:
    """Column `name` of `ds`, in the order of its rows."""
    values = ds.data.column(name)
    selection = _selection(ds)
    return values if selection is None else _take(values, selection)


def rows(ds: Dataset, start: int, stop: int) -> pa.Table:
    """Rows start..stop-1 of `ds`, as one contiguous table."""
    selection = _selection(ds)
    table = ds.data.table
    if selection is None:
        return table.slice(start, stop - start).combine_chunks()
    picked = selection[start:stop]
    return pa.table({name: _take(table.column(name), picked) for name in table.column_names}, schema=table.schema)


def _selection(ds: Dataset) -> np.ndarray | None:
    """The rows of the underlying table that `ds` shows (None: all, in order). `_indices` is
    the one place `datasets` keeps them; it has no public accessor."""
    return None if ds._indices is None else ds._indices.column(0).to_numpy().astype(np.int64)


def _take(values: pa.ChunkedArray, selection: np.ndarray) -> pa.Array:
    """values[selection] as one array: the rows taken from each chunk they lie in (in
    ascending order), then put in `selection`'s order."""
    order = np.argsort(selection, kind="stable")
    ascending = selection[order]
    bounds = np.cumsum([0] + [len(chunk) for chunk in values.chunks])
    chunk_of = np.searchsorted(bounds, ascending, side="right") - 1
    cuts = np.flatnonzero(np.diff(chunk_of)) + 1
    parts = [values.chunk(int(chunk_of[a])).take(pa.array(ascending[a:b] - bounds[chunk_of[a]]))
             for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(ascending)]) if b > a]
    taken = pa.concat_arrays(parts) if parts else pa.array([], type=values.type)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return taken.take(pa.array(inverse))
