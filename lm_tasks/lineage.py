"""Where the runs that produced a lifecycle's stages live.

A cache entry remembers the MLflow run that produced it, but a shared cache store outlives
tracking stores: a stage served from the cache may come from a run in another store (another
team's server, an earlier `tracking.tracking_uri`). The lifecycle run records, per stage,
the producing run and whether it is in this store:

    stage.<stage>.run_id    = <run id>
    stage.<stage>.tracking  = this-store | other-store
"""

from __future__ import annotations

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import PERMISSION_DENIED, RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient

THIS_STORE, OTHER_STORE = "this-store", "other-store"


def run_here(run_id: str) -> Run | None:
    """The run from the current tracking store, or None when the store has no such run, or
    none this user may read (another team's experiment on a shared server). Any other error
    (the server unreachable) is raised."""
    try:
        return MlflowClient().get_run(run_id)
    except MlflowException as err:
        if err.error_code in (ErrorCode.Name(RESOURCE_DOES_NOT_EXIST), ErrorCode.Name(PERMISSION_DENIED)):
            return None
        raise


def input_digests(run_tags: dict) -> dict[str, str]:
    """A stage run's inputs, from its `input.<name>_digest` tags: name -> content digest."""
    return {k.removeprefix("input.").removesuffix("_digest"): v for k, v in run_tags.items()
            if k.startswith("input.") and k.endswith("_digest")}


def tags(results: list) -> dict[str, str]:
    """The lineage tags of the lifecycle run, for its stages' results (StageResult)."""
    tags = {}
    for result in results:
        tags[f"stage.{result.stage}.run_id"] = result.run_id
        tags[f"stage.{result.stage}.tracking"] = THIS_STORE if run_here(result.run_id) else OTHER_STORE
    return tags
