"""Load, clean and split the configured text source.

    python -m flows.data [hydra overrides]
"""

from flows.common import run_cli, stage_flow
from lm_tasks.stages import run_data

data_task, data_flow = stage_flow("data", run_data)

def main() -> None:
    """The `lm-data` command (pyproject.toml), same as `python -m flows.data`."""
    run_cli(data_flow)


if __name__ == "__main__":
    main()
