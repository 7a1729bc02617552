"""Held-out loss, perplexity, bits per byte and sample generations of the pretrained model.

    python -m flows.evaluate [hydra overrides]
"""

from flows.common import run_cli, stage_flow
from lm_tasks.stages import run_evaluate

evaluate_task, evaluate_flow = stage_flow("evaluate", run_evaluate)

def main() -> None:
    """The `lm-evaluate` command (pyproject.toml), same as `python -m flows.evaluate`."""
    run_cli(evaluate_flow)


if __name__ == "__main__":
    main()
