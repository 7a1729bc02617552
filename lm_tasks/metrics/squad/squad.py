"""SQuAD exact match and token F1, with the official answer normalisation."""

import collections
import re
import string

import datasets
import evaluate

_DESCRIPTION = """Exact match and token-level F1 between a predicted answer span and the gold
answers, each the maximum over all gold answers, averaged over questions and
reported in percent. Answers are normalised as in the official SQuAD v1.1 script:
lower case, punctuation and the articles a/an/the removed, whitespace collapsed.
An empty gold list (unanswerable) matches only an empty prediction."""

_KWARGS = """
Args:
    predictions (list[str]): predicted answer texts ("" for no answer).
    references (list[list[str]]): the gold answer texts of each question.
Returns:
    exact_match (float), f1 (float), in percent.
"""


def normalize_answer(text):
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction, gold):
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred_tokens), overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Squad(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="Rajpurkar et al. 2016, SQuAD", inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Sequence(datasets.Value("string"))}),
        )

    def _compute(self, predictions, references):
        exact, f1 = 0.0, 0.0
        for prediction, golds in zip(predictions, references):
            golds = list(golds) or [""]
            exact += max(float(normalize_answer(prediction) == normalize_answer(g)) for g in golds)
            f1 += max(token_f1(prediction, g) for g in golds)
        return {"exact_match": 100.0 * exact / len(predictions), "f1": 100.0 * f1 / len(predictions)}
