"""Gopher/C4-style quality signals and rules on hand-computed and crafted documents."""

from __future__ import annotations

import pytest

from lm_tasks.data.quality import GOPHER_THRESHOLDS, RULES, first_failed_rule, quality_signals

PROSE = (
    "The river rises in the hills above the old mill town and runs south through farmland "
    "for most of its length. In spring the water is high and brown with mud, and the meadows "
    "along its banks are often flooded for weeks. By late summer it shrinks to a slow, clear "
    "stream that children can wade across without getting their knees wet. Anglers come from "
    "far away for the trout, which hide under the willows where the current turns."
)


def unique_words(count: int, offset: int = 0) -> list[str]:
    """`count` distinct five-letter words ("aaaaa", "baaaa", ...)."""
    return ["".join(chr(97 + (i // 26**k) % 26) for k in range(5)) for i in range(offset, offset + count)]


def interleaved(phrase: str, repeats: int, filler_per_repeat: int) -> str:
    """`phrase` `repeats` times, each after `filler_per_repeat` new unique words, on one line."""
    filler = unique_words(repeats * filler_per_repeat)
    parts = []
    for i in range(repeats):
        parts += filler[i * filler_per_repeat:(i + 1) * filler_per_repeat] + [phrase]
    return " ".join(parts)


def test_rules_are_checked_in_the_documented_order():
    assert RULES == (
        "min_words", "max_words", "min_mean_word_length", "max_mean_word_length", "max_symbol_word_ratio",
        "min_alpha_word_fraction", "min_punctuation_line_fraction", "max_duplicate_line_fraction",
        "max_top_2gram_fraction", "max_top_3gram_fraction", "max_top_4gram_fraction",
        "max_duplicate_5gram_fraction",
    )
    assert tuple(GOPHER_THRESHOLDS) == RULES


def test_signals_of_a_hand_computed_text():
    # Words: The cat sat. The cat sat. # A dog ran...  -> 10 words, 31 characters.
    signals = quality_signals("The cat sat.\nThe cat sat.\n# A dog ran...\n")
    assert signals == pytest.approx({
        "words": 10,
        "mean_word_length": 3.1,
        "symbol_word_ratio": 2 / 10,  # one "#" and one "..."
        "alpha_word_fraction": 9 / 10,  # "#" has no letter
        "punctuation_line_fraction": 1.0,  # all three lines end in "."
        "duplicate_line_fraction": 1 / 3,
        "top_2gram_fraction": 12 / 31,  # "The cat" (seen before "cat sat.") twice: 2 * 6 characters
        "top_3gram_fraction": 20 / 31,  # "The cat sat." twice
        "top_4gram_fraction": 0.0,  # no 4-gram occurs twice
        "duplicate_5gram_fraction": 0.0,
    })


def test_signals_of_lines_and_symbols():
    signals = quality_signals("Intro:\n- first item\n- second item\n\n…and so on\nTHE END")
    assert signals["punctuation_line_fraction"] == pytest.approx(1 / 5)  # only "Intro:"; the blank line is skipped
    assert signals["words"] == 12
    assert signals["symbol_word_ratio"] == pytest.approx(1 / 12)  # "…"
    assert signals["alpha_word_fraction"] == pytest.approx(10 / 12)  # the two "-" have no letter
    assert signals["duplicate_line_fraction"] == 0.0


def test_repeated_ngrams_are_counted_once_where_they_overlap():
    signals = quality_signals("ab ab ab ab ab ab")
    assert signals["top_2gram_fraction"] == 1.0
    assert signals["duplicate_5gram_fraction"] == 1.0
    # An n-gram seen once covers nothing, however long the text.
    assert quality_signals(" ".join(unique_words(200)))["top_2gram_fraction"] == 0.0


def test_text_without_words_has_zero_signals():
    for text in ("", "  \n\t "):
        assert set(quality_signals(text).values()) == {0.0}
        assert first_failed_rule(text, GOPHER_THRESHOLDS) == "min_words"


def test_ordinary_prose_passes_the_gopher_rules():
    assert quality_signals(PROSE)["words"] >= 50
    assert first_failed_rule(PROSE, GOPHER_THRESHOLDS) is None
    short = PROSE.split(". ")[0] + "."
    assert first_failed_rule(short, GOPHER_THRESHOLDS) == "min_words"
    assert first_failed_rule(short, {**GOPHER_THRESHOLDS, "min_words": None}) is None


CRAFTED = {
    "min_words": "Far too short to be a document.",
    "max_words": "word " * 100_001,
    "min_mean_word_length": " ".join(["an", "of", "to", "is"] * 20),
    "max_mean_word_length": " ".join(["internationalisation"] * 60),
    "max_symbol_word_ratio": " ".join(unique_words(60)) + " #" * 10,  # 10 / 70
    "min_alpha_word_fraction": " ".join(unique_words(40)) + " 1234" * 20,  # 40 / 60
    "min_punctuation_line_fraction": "\n".join(" ".join(unique_words(10, 10 * i)) for i in range(6)),
    "max_duplicate_line_fraction": "\n".join(
        [" ".join(unique_words(10, 10 * i)) + "." for i in range(4)] + [" ".join(unique_words(10)) + "."] * 3
    ),  # 3 of 7 lines repeat the first
    "max_top_2gram_fraction": interleaved("hello world", repeats=20, filler_per_repeat=5),  # 200 / 700
    "max_top_3gram_fraction": interleaved("alpha bravo delta", repeats=12, filler_per_repeat=10),  # 180 / 780
    "max_top_4gram_fraction": interleaved("alpha bravo delta gamma", repeats=10, filler_per_repeat=16),  # 200 / 1000
    "max_duplicate_5gram_fraction": " ".join(unique_words(30) + unique_words(40, 30) + unique_words(30)),  # 300 / 500
}


@pytest.mark.parametrize("rule", RULES)
def test_each_rule_fires_first_on_its_crafted_document(rule):
    thresholds = dict(GOPHER_THRESHOLDS)
    if rule == "min_punctuation_line_fraction":  # off in Gopher; FineWeb's value
        thresholds[rule] = 0.12
    assert first_failed_rule(CRAFTED[rule], thresholds) == rule
    # With that rule off, the document fails a later rule or none.
    later = first_failed_rule(CRAFTED[rule], {**thresholds, rule: None})
    assert later is None or RULES.index(later) > RULES.index(rule)


def test_crafted_ngram_documents_sit_where_intended():
    top3 = quality_signals(CRAFTED["max_top_3gram_fraction"])
    assert top3["top_2gram_fraction"] == pytest.approx(120 / 780)
    assert top3["top_3gram_fraction"] == pytest.approx(180 / 780)
    top4 = quality_signals(CRAFTED["max_top_4gram_fraction"])
    assert (top4["top_2gram_fraction"], top4["top_3gram_fraction"], top4["top_4gram_fraction"]) == pytest.approx(
        (0.1, 0.15, 0.2))
    dup5 = quality_signals(CRAFTED["max_duplicate_5gram_fraction"])
    assert dup5["duplicate_5gram_fraction"] == pytest.approx(0.6)
    assert dup5["top_4gram_fraction"] == pytest.approx(0.08)


def test_thresholds_left_out_or_none_are_not_checked():
    assert first_failed_rule(CRAFTED["min_words"], {}) is None
    assert first_failed_rule(CRAFTED["max_mean_word_length"], {"max_mean_word_length": None}) is None
    assert first_failed_rule(CRAFTED["max_mean_word_length"], {"max_mean_word_length": 25}) is None


def test_unknown_rule_names_are_rejected_with_the_valid_ones():
    with pytest.raises(ValueError, match=r"'max_wrods'.*min_words, max_words"):
        first_failed_rule(PROSE, {"max_wrods": 10})
