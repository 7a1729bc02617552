"""Task metrics as `evaluate` modules that ship inside the package.

The Hub copies of these metrics are unreachable offline and change under you;
the modules here load with `evaluate.load(<local path>)` and pin the behaviour.

    from lm_tasks.metrics import load_metric
    load_metric("squad").compute(predictions=["Denver Broncos"], references=[["Denver Broncos"]])
"""

from __future__ import annotations

from pathlib import Path

import evaluate

MODULES = ("classification", "squad", "rouge", "sacrebleu")


def load_metric(name: str) -> evaluate.EvaluationModule:
    if name not in MODULES:
        raise ValueError(f"Unknown metric '{name}'; the packaged metrics are {', '.join(MODULES)}")
    return evaluate.load(str(Path(__file__).parent / name / f"{name}.py"))
