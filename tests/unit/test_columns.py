"""Columns and row ranges of a row selection, read through Arrow's take."""

from datasets import Dataset

from lm_tasks.data.columns import column, rows


def test_a_selection_reads_as_its_rows_in_order():
    ds = Dataset.from_dict({"text": [f"row {i}" for i in range(10)], "n": list(range(10))})
    picked = ds.select([7, 2, 2, 9])
    assert column(picked, "n").to_pylist() == [7, 2, 2, 9]
    assert column(ds, "text").to_pylist() == ds["text"]
    part = rows(picked, 1, 3)
    assert part.column_names == ["text", "n"] and part.to_pydict() == {"text": ["row 2", "row 2"], "n": [2, 2]}
    assert all(c.num_chunks == 1 for c in part.columns)  # one contiguous chunk, whatever the selection
    assert rows(ds, 8, 10).to_pydict() == {"text": ["row 8", "row 9"], "n": [8, 9]}
    assert len(rows(picked.select([]), 0, 0)) == 0
