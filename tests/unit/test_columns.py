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


def test_rows_of_many_chunks_in_any_order():
    """A selection across the chunks of a table written in batches, shuffled and repeated."""
    import random

    from datasets import concatenate_datasets

    ds = concatenate_datasets([Dataset.from_dict({"n": list(range(k, k + 7))}) for k in range(0, 70, 7)])
    assert ds.data.column("n").num_chunks == 10
    picked = random.Random(0).choices(range(70), k=40)
    assert column(ds.select(picked), "n").to_pylist() == picked
    assert rows(ds.select(picked), 5, 25).column("n").to_pylist() == picked[5:25]
