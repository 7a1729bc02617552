"""Cleaning functions on the edge cases real files contain."""

from __future__ import annotations

import pytest
from datasets import Dataset

from lm_tasks.config import CleaningConfig
from lm_tasks.data.cleaning import clean_dataset, first_occurrences, normalize_text


@pytest.mark.parametrize("raw,clean", [
    ("", ""),
    ("   \t \n\n  ", ""),
    ("line one\r\nline two\rline three", "line one\nline two\nline three"),
    ("\ufeffstarts with a BOM", "starts with a BOM"),
    ("nul\x00 bytes\x07 and bell", "nul bytes and bell"),
    ("zero\u200bwidth and \u202ebidi\u202c", "zerowidth and bidi"),
    ("bad bytes \ufffd\ufffd here", "bad bytes  here"),
    ("trailing spaces   \nnext", "trailing spaces\nnext"),
    ("a\n\n\n\n\nb", "a\n\nb"),
    ("non\u00a0breaking\u3000spaces", "non breaking spaces"),
    ("line\u2028separator", "line\nseparator"),
    ("    indented code stays", "indented code stays"),
    ("def f():\n    return 1", "def f():\n    return 1"),
])
def test_normalize_text(raw, clean):
    assert normalize_text(raw, "NFC") == clean


def test_unicode_forms():
    decomposed = "Cafe\u0301"  # e + combining acute
    assert normalize_text(decomposed, "NFC") == "Caf\u00e9"
    assert normalize_text("\ufb01ne", "NFKC") == "fine"  # the fi ligature
    assert normalize_text(decomposed, "none") == decomposed


def test_first_occurrences():
    assert first_occurrences(["a", "b", "a", "c", "b"]) == [0, 1, 3]


def test_clean_dataset_counts_rows_per_step():
    rows = ["a real sentence here", "a real sentence here", "short", "  ", "another fine row\r\n", "x" * 50]
    cfg = CleaningConfig(unicode_form="NFC", min_chars=10, max_chars=40, dedup=True)
    cleaned, stats = clean_dataset(Dataset.from_dict({"text": rows}), cfg)
    assert list(cleaned["text"]) == ["a real sentence here", "another fine row"]
    assert stats == [
        {"step": "normalize", "rows_in": 6, "rows_out": 6, "changed": 2},
        {"step": "length_filter", "rows_in": 6, "rows_out": 3, "changed": 0},
        {"step": "exact_dedup", "rows_in": 3, "rows_out": 2, "changed": 0},
    ]


def test_clean_dataset_with_two_processes_matches_one():
    rows = [f"row number {i % 37} of the corpus" for i in range(400)]
    cfg = CleaningConfig(unicode_form="NFC", min_chars=1, max_chars=1000, dedup=True)
    one, _ = clean_dataset(Dataset.from_dict({"text": rows}), cfg, num_proc=1)
    two, _ = clean_dataset(Dataset.from_dict({"text": rows}), cfg, num_proc=2)
    assert list(one["text"]) == list(two["text"]) and len(one) == 37
