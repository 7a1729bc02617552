"""Corpus BLEU and chrF computed with the `sacrebleu` package."""

import datasets
import evaluate
import sacrebleu as scb

_DESCRIPTION = """Corpus-level BLEU (sacreBLEU's default 13a tokenisation, exponential smoothing)
and chrF (character n-gram F-score, beta 2), both from `sacrebleu`, in percent.
Every example must have the same number of references."""

_KWARGS = """
Args:
    predictions (list[str]): system translations.
    references (list[list[str]]): the reference translations of each example.
Returns:
    bleu (float), chrf (float), in percent; bleu_signature (str).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Sacrebleu(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="Post 2018, A Call for Clarity in Reporting BLEU Scores",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Sequence(datasets.Value("string"))}),
        )

    def _compute(self, predictions, references):
        counts = {len(refs) for refs in references}
        if len(counts) != 1:
            raise ValueError("sacrebleu needs the same number of references for every example")
        streams = [list(stream) for stream in zip(*references)]  # transpose: one stream per reference
        bleu = scb.metrics.BLEU()
        score = bleu.corpus_score(predictions, streams)
        chrf = scb.corpus_chrf(predictions, streams)
        return {"bleu": score.score, "chrf": chrf.score, "bleu_signature": str(bleu.get_signature())}
