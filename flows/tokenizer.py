"""Train the tokenizer on the cleaned data and pack every split into token arrays.

    python -m flows.tokenizer [hydra overrides]
"""

from flows.common import run_cli, stage_flow
from lm_tasks.stages import run_tokenizer

tokenizer_task, tokenizer_flow = stage_flow("tokenizer", run_tokenizer)

def main() -> None:
    """The `lm-tokenizer` command (pyproject.toml), same as `python -m flows.tokenizer`."""
    run_cli(tokenizer_flow)


if __name__ == "__main__":
    main()
