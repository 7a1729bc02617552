"""Prefect flows: thin wrappers that wire the lm_tasks stages together.

`python -m flows.<stage> [hydra overrides]` runs one stage,
`python -m flows.lifecycle [hydra overrides]` runs them all, `-m` sweeps.
"""

import os

# Before Prefect is imported: no telemetry, and the library's log lines shown in flow logs.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # nor MLflow's usage reports
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "lm_tasks")

import logging  # noqa: E402

# The library logs progress lines at INFO; Prefect forwards them into the flow logs.
logging.getLogger("lm_tasks").setLevel(logging.INFO)
