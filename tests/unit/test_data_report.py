"""The data report's tables and histograms count every row."""

from __future__ import annotations

import numpy as np

from lm_tasks.data.report import length_histogram, report_markdown


def test_length_histogram_counts_every_row_empty_ones_included():
    lengths = np.array([0, 0, 1, 5, 80, 80, 3000])
    counts, edges = length_histogram(lengths)
    assert counts.sum() == len(lengths) and counts[0] == 3  # the two empty rows and the 1-byte one
    assert edges[0] == 1 and edges[-1] >= 3000


def test_report_markdown_names_rows_and_bytes_per_rule():
    step = {"step": "quality", "rows_in": 10, "rows_out": 7, "bytes_in": 5000, "bytes_out": 4200, "changed": 0,
            "dropped": {"min_words": 2, "max_symbol_word_ratio": 1},
            "dropped_bytes": {"min_words": 300, "max_symbol_word_ratio": 500}, "details": {}}
    report = {"source": "x", "digest": "0" * 64, "splits": {"train": {"rows": 7, "bytes": 4200, "shards": 1}},
              "steps": {"train": [step]}}
    assert "| quality | 10 | 7 | 5,000 | 4,200 | min_words 2 (300 B), max_symbol_word_ratio 1 (500 B) |" \
        in report_markdown(report)
