"""Train the tokenizer on the cleaned data and pack every split into token arrays.

    python -m flows.tokenizer [hydra overrides]
"""

from flows.common import run_cli, stage_flow
from lm_tasks.stages import run_tokenizer

tokenizer_task, tokenizer_flow = stage_flow("tokenizer", run_tokenizer)

if __name__ == "__main__":
    run_cli(tokenizer_flow)
