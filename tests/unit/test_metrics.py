"""The packaged evaluate modules load offline and agree with their references."""

from __future__ import annotations

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from lm_tasks.metrics import load_metric


def test_classification_on_a_hand_made_case():
    # class 0: F1 1; class 1: tp 1, fp 1 -> 2/3; class 2: tp 1, fn 1 -> 2/3.
    result = load_metric("classification").compute(predictions=[0, 1, 1, 2], references=[0, 1, 2, 2])
    assert result["accuracy"] == pytest.approx(0.75)
    assert result["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_classification_counts_a_never_predicted_class_as_zero():
    result = load_metric("classification").compute(predictions=[0, 0, 0, 0], references=[0, 0, 1, 1])
    assert result["accuracy"] == 0.5
    assert result["macro_f1"] == pytest.approx((2 / 3 + 0) / 2)  # class 0: tp 2, fp 2


def test_squad_on_a_hand_computed_example():
    result = load_metric("squad").compute(
        predictions=["the Denver Broncos", "Broncos won", "Carolina", ""],
        references=[["Denver Broncos"], ["Denver Broncos", "Broncos."], ["Panthers"], []],
    )
    # EM: 1 (articles dropped), 0, 0, 1 (empty answers an unanswerable question).
    # F1: 1, max(0.5, 2*(1/2*1)/(1/2+1)=2/3), 0, 1.
    assert result["exact_match"] == pytest.approx(100 * 2 / 4)
    assert result["f1"] == pytest.approx(100 * (1 + 2 / 3 + 0 + 1) / 4)


def test_rouge_matches_rouge_score():
    predictions = ["the cat sat on the mat", "a quick brown dog jumps\nover the fence"]
    references = [["the cat was sitting on the mat"], ["the quick brown fox jumped\nover the lazy dog"]]
    result = load_metric("rouge").compute(predictions=predictions, references=references)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    for kind in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        expected = sum(scorer.score(r[0], p)[kind].fmeasure for p, r in zip(predictions, references)) / 2
        assert result[kind] == pytest.approx(expected)


def test_sacrebleu_matches_corpus_bleu_and_chrf():
    predictions = ["The cat sat on the mat.", "There is a dog in the garden."]
    references = [["The cat is sitting on the mat."], ["A dog is in the garden."]]
    result = load_metric("sacrebleu").compute(predictions=predictions, references=references)
    streams = [[r[0] for r in references]]
    assert result["bleu"] == pytest.approx(sacrebleu.corpus_bleu(predictions, streams).score)
    assert result["chrf"] == pytest.approx(sacrebleu.corpus_chrf(predictions, streams).score)
    assert result["bleu_signature"].startswith("nrefs:1|")


def test_unknown_metric_lists_the_packaged_ones():
    with pytest.raises(ValueError, match="classification, squad, rouge, sacrebleu"):
        load_metric("bleurt")
