"""ROUGE-1/2/L/Lsum F-measures computed with Google's `rouge_score` package."""

import datasets
import evaluate
from rouge_score import rouge_scorer

_DESCRIPTION = """ROUGE F-measures (rouge1, rouge2, rougeL, rougeLsum) from `rouge_score`,
averaged over examples (a plain mean, no bootstrap). rougeLsum splits summaries into
sentences at newlines. Stemming is on by default; with several references per
example the best-scoring reference counts."""

_KWARGS = """
Args:
    predictions (list[str]): generated summaries.
    references (list[list[str]]): one or more reference summaries per example.
    use_stemmer (bool): Porter stemming before matching (default True).
Returns:
    rouge1, rouge2, rougeL, rougeLsum (float), in [0, 1].
"""

TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Rouge(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="Lin 2004, ROUGE", inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Sequence(datasets.Value("string"))}),
        )

    def _compute(self, predictions, references, use_stemmer=True):
        scorer = rouge_scorer.RougeScorer(list(TYPES), use_stemmer=use_stemmer)
        totals = dict.fromkeys(TYPES, 0.0)
        for prediction, refs in zip(predictions, references):
            scores = scorer.score_multi(list(refs), prediction)
            for kind in TYPES:
                totals[kind] += scores[kind].fmeasure
        return {kind: total / len(predictions) for kind, total in totals.items()}
