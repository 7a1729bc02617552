"""Cleaning one split: each step's effect, its counts and the samples it reports."""

from __future__ import annotations

import pytest
from datasets import Dataset

from lm_tasks.config import load_config
import unicodedata

from lm_tasks.data.cleaning import clean_split, clean_text, decontaminate, eval_text_hashes, normalize_text
from lm_tasks.data.decontamination import NgramIndex
from lm_tasks.data.mapping import LocalMap
from tests.text_samples import paragraphs

def rows(texts: list[str]) -> Dataset:
    return Dataset.from_dict({"text": texts, "source": ["test.txt"] * len(texts), "row": list(range(1, len(texts) + 1))})


def cleaning(*overrides: str):
    return load_config([f"data.cleaning.{o}" for o in overrides]).data.cleaning


def by_step(reports) -> dict:
    return {r.step: r for r in reports}


@pytest.mark.parametrize("raw,clean", [
    ("", ""),
    ("   \t \n\n  ", ""),
    ("line one\r\nline two\rline three", "line one\nline two\nline three"),
    ("\ufeffstarts with a BOM", "starts with a BOM"),
    ("nul\x00 bytes\x07 and bell", "nul bytes and bell"),
    ("zero\u200bwidth and \u202ebidi\u202c", "zerowidth and bidi"),
    ("arabic letter mark\u061c gone", "arabic letter mark gone"),
    ("family 👩\u200d👧 and ZWNJ \u200c stay", "family 👩\u200d👧 and ZWNJ \u200c stay"),
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
    # An invisible character between a letter and its accent is removed before composing.
    hidden = normalize_text("Cafe\u200b\u0301", "NFC")
    assert hidden == "Caf\u00e9" and unicodedata.is_normalized("NFC", hidden)


def test_each_step_counts_rows_bytes_and_reasons():
    good = paragraphs(6)
    texts = [good[0], good[0] + "  ", "short", "  ", good[1] + "\r\n", "x" * 300, good[2],
             "Write to jane.doe@example.com or call +44 20 7946 0958 today, says the letter.", good[3]]
    cleaned, reports = clean_split(rows(texts), cleaning("max_chars=200", "near_dedup.enabled=false"))
    steps = by_step(reports)
    assert list(steps) == ["normalize", "length", "pii", "quality", "language", "exact_dedup"]
    assert list(cleaned["text"]) == [good[0], good[1], good[2],
                                     "Write to <EMAIL> or call <PHONE> today, says the letter.", good[3]]
    assert (steps["normalize"].rows_in, steps["normalize"].changed) == (9, 3)
    assert steps["length"].dropped == {"too_short": 2, "too_long": 1}
    assert steps["pii"].details["replaced"] == {"email": 1, "phone": 1, "ip": 0} and steps["pii"].changed == 1
    assert steps["exact_dedup"].dropped == {"duplicate": 1}
    assert steps["exact_dedup"].details["cluster_sizes"] == {"2": 1}
    assert steps["length"].bytes_in - steps["length"].bytes_out == 300 + len("short")
    # the samples say which row of which source was dropped, and why
    assert {(s["reason"], s["row"]) for s in steps["length"].samples} == {("too_short", 3), ("too_short", 4),
                                                                         ("too_long", 6)}
    assert all(s["source"] == "test.txt" for s in steps["length"].samples)
    assert cleaned.column_names == ["text", "source", "row", "n_bytes"]
    assert list(cleaned["row"]) == [1, 5, 7, 8, 9]


def test_quality_rules_name_what_they_drop():
    symbols = "Heading #one #two #three #four and #five #six with #seven tags #eight."
    repeated = "\n".join(["the same line again and again"] * 6)
    cleaned, reports = clean_split(rows([symbols, repeated, *paragraphs(3)]), cleaning("near_dedup.enabled=false"))
    assert by_step(reports)["quality"].dropped == {"max_symbol_word_ratio": 1, "max_duplicate_line_fraction": 1}
    assert len(cleaned) == 3


def test_language_filter_keeps_the_listed_languages_and_reports_the_mix():
    english = "The old man went down to the harbor in the morning and he was not alone there."
    german = "Ein Mann mit einer orangefarbenen Mütze, der etwas anstarrt, und ein Hund in der Nähe."
    cleaned, reports = clean_split(rows([english, german]), cleaning("languages=[en]"))
    language = by_step(reports)["language"]
    assert list(cleaned["text"]) == [english]
    assert language.dropped == {"language_de": 1}
    assert language.details["languages"] == {"en": 1, "de": 1}


def test_near_duplicates_go_and_the_sample_shows_what_they_duplicate():
    originals = paragraphs(20, words=40)
    copy = originals[4].split()
    copy[10] = "lighthouse"  # one word in 40 changed
    cleaned, reports = clean_split(rows(originals + [" ".join(copy)]), cleaning())
    near = by_step(reports)["near_dedup"]
    assert near.dropped == {"near_duplicate": 1} and near.details["cluster_sizes"] == {"2": 1}
    assert near.samples[0]["row"] == 21 and near.samples[0]["duplicate_of"]["row"] == 5
    assert list(cleaned["text"]) == originals


def test_each_rule_counts_the_bytes_it_drops():
    good = paragraphs(8)
    texts = [*good[:4], "short", "x" * 300, good[0], "$$$ ### %%% @@@ !!! ^^^ &&& *** ((( ))) +++ === ~~~ |||"]
    _, reports = clean_split(rows(texts), cleaning("max_chars=200", "near_dedup.enabled=false"))
    for step in reports:
        assert set(step.dropped) == set(step.dropped_bytes), step.step
        if step.step in ("length", "quality", "language", "exact_dedup"):  # filters: bytes out = in - dropped
            assert step.bytes_in - step.bytes_out == sum(step.dropped_bytes.values()), step.step
    steps = by_step(reports)
    assert steps["length"].dropped_bytes == {"too_short": 5, "too_long": 300}
    assert steps["exact_dedup"].dropped_bytes == {"duplicate": len(good[0].encode())}
    assert sum(steps["quality"].dropped_bytes.values()) == len(texts[-1].encode())


def test_two_processes_clean_like_one():
    texts = paragraphs(200) + paragraphs(50)  # the second batch repeats the first 50
    one, one_reports = clean_split(rows(texts), cleaning(), LocalMap(1))
    two, two_reports = clean_split(rows(texts), cleaning(), LocalMap(2))
    assert list(one["text"]) == list(two["text"]) and len(one) == 200
    assert [r.to_dict() for r in one_reports] == [r.to_dict() for r in two_reports]
    assert one_reports[-2].dropped == {"duplicate": 50}


def test_decontamination_drops_rows_that_quote_or_equal_an_evaluation_text():
    evaluation = ["a quick brown fox jumps over the lazy dog near the river bank at dawn today",
                  "Too short for n-grams."]
    train = paragraphs(5) + [f"Once upon a time {evaluation[0]} and then it slept.", evaluation[1]]
    cleaned, _ = clean_split(rows(train), cleaning())
    kept, report = decontaminate(cleaned, NgramIndex(evaluation, n=13), eval_text_hashes(evaluation), cleaning())
    assert report.dropped == {"shares_eval_ngram": 1, "equals_eval_text": 1} and len(kept) == 5
    assert sorted(s["row"] for s in report.samples) == [6, 7]
    assert list(kept["text"]) == list(cleaned["text"])[:5]


def test_evaluation_texts_are_matched_in_the_form_training_rows_have():
    # An evaluation text in NFD with an e-mail address; the training row quoting it was
    # normalised to NFC and scrubbed, so only the evaluation text in the same form matches.
    evaluation = ("Le cafe\u0301 du coin ouvre a\u0300 sept heures, e\u0301crivez a\u0300 jean@example.com "
                  "pour re\u0301server")
    train = paragraphs(3) + [f"On lit: {unicodedata.normalize('NFC', evaluation)} et voila."]
    cfg = cleaning("languages=null")
    cleaned, _ = clean_split(rows(train), cfg)
    raw_index = NgramIndex([evaluation], n=8)
    assert decontaminate(cleaned, raw_index, eval_text_hashes([evaluation]), cfg)[1].dropped == {}
    same_form = clean_text(evaluation, cfg)
    assert "<EMAIL>" in same_form and unicodedata.is_normalized("NFC", same_form)
    kept, report = decontaminate(cleaned, NgramIndex([same_form], n=8), eval_text_hashes([same_form]), cfg)
    assert report.dropped == {"shares_eval_ngram": 1} and len(kept) == 3
