"""Pretrain the GPT with Lightning on the packed tokens; export the best weights.

    python -m flows.pretrain [hydra overrides]
"""

from flows.common import run_cli, stage_flow
from lm_tasks.stages import run_pretrain

pretrain_task, pretrain_flow = stage_flow("pretrain", run_pretrain)

def main() -> None:
    """The `lm-pretrain` command (pyproject.toml), same as `python -m flows.pretrain`."""
    run_cli(pretrain_flow)


if __name__ == "__main__":
    main()
