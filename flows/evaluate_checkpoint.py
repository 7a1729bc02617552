"""One pretraining checkpoint evaluated, as its `lm-tasks.checkpoint.saved` event announced it.

The `lm-evaluate-checkpoint` deployment (prefect.yaml) runs this flow on a worker for each
checkpoint of a pretraining with `eval.checkpoints.evaluator=deployment`: the event's payload
names the MLflow run, the step, the weights' digest and the tokens' cache key; the flow finds
the snapshot and the tokens in the cache (this machine's, or the shared cache.store), scores
them (cached by digest) and logs the results into that run at that step. `overrides` are the
worker's Hydra overrides, as for every flow (its cache.store and tracking.* must be the
training's).
"""

from prefect import flow, task

from flows.common import RETRY_POLICY, flow_config, redacting
from lm_tasks.stages import run_checkpoint_evaluation

evaluate_checkpoint_task = task(name="evaluate-checkpoint", **RETRY_POLICY)(redacting(run_checkpoint_evaluation))


@flow(name="evaluate-checkpoint", flow_run_name="checkpoint {step} of run {run_id}")
@redacting
def evaluate_checkpoint_flow(run_id: str, step: int, digest: str, tokens_key: str,
                             overrides: list[str] | None = None) -> dict:
    """Evaluate the checkpoint a `lm-tasks.checkpoint.saved` event announced; its ckpt/* metrics."""
    cfg = flow_config(overrides)
    return evaluate_checkpoint_task(cfg, run_id, step, digest, tokens_key)
