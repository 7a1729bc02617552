"""Accuracy and macro-averaged F1 for single-label classification."""

import datasets
import evaluate

_DESCRIPTION = """Accuracy (fraction of exact label matches) and macro-F1 (the unweighted mean of
per-class F1 over every label seen in references or predictions; a class with no
true or predicted positives scores F1 = 0)."""

_KWARGS = """
Args:
    predictions (list[int]): predicted label ids.
    references (list[int]): gold label ids.
Returns:
    accuracy (float), macro_f1 (float), both in [0, 1].
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Classification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("int64"),
                                        "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        pairs = list(zip(predictions, references))
        accuracy = sum(p == r for p, r in pairs) / len(pairs)
        f1s = []
        for label in sorted(set(predictions) | set(references)):
            tp = sum(p == label and r == label for p, r in pairs)
            fp = sum(p == label and r != label for p, r in pairs)
            fn = sum(p != label and r == label for p, r in pairs)
            f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
        return {"accuracy": accuracy, "macro_f1": sum(f1s) / len(f1s)}
