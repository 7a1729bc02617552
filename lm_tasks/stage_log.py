"""A stage's log file: what the stage logged while it computed, kept with its output.

Every record the stage's thread logs (lm_tasks, Lightning, MLflow, datasets...), secrets
masked, goes to `stage.log` in the stage's work folder: committed with the cache entry,
and logged as an artifact of the stage's MLflow run. A stage that fails ends its log with
the traceback, which the console leaves out (flows.common prints one paragraph), and
still logs it to its (FAILED) MLflow run.
"""

from __future__ import annotations

import logging
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import mlflow

from lm_tasks.redaction import RedactingFilter

LOG_NAME = "stage.log"
FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"

log = logging.getLogger(__name__)


@contextmanager
def stage_log(path: Path, stage: str) -> Iterator[Path]:
    """Log this thread's records to `path` (appended to: a resumed attempt continues it)."""
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(FORMAT))
    thread = threading.get_ident()
    handler.addFilter(lambda record: record.thread == thread)  # not a concurrent stage's lines
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield path
    except BaseException:
        # the traceback into this file only: the console shows the error in one paragraph
        handler.handle(logging.LogRecord(__name__, logging.ERROR, __file__, 0, "%s failed", (stage,),
                                         sys.exc_info()))
        raise
    finally:
        root.removeHandler(handler)
        handler.close()
        try:
            mlflow.log_artifact(str(path))
        except Exception as err:  # the stage's own outcome matters more than its log's upload
            log.warning("Could not log %s to MLflow (%s: %s); it stays in %s", LOG_NAME, type(err).__name__, err,
                        path)
