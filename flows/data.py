"""Load, clean and split the configured text source.

    python -m flows.data [hydra overrides]
"""

from flows.common import run_cli, stage_flow
from lm_tasks.stages import run_data

data_task, data_flow = stage_flow("data", run_data)

if __name__ == "__main__":
    run_cli(data_flow)
