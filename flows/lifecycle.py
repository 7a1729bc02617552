"""The whole lifecycle as one Prefect flow, tracked as one MLflow parent run.

    python -m flows.lifecycle [hydra overrides]
    python -m flows.lifecycle finetune=classification     # with task fine-tuning
    python -m flows.lifecycle -m optim.lr=1e-3,3e-4      # one lifecycle per sweep job
    python -m flows.lifecycle hparams_search=tpe         # a hyperparameter search, one lifecycle per trial

data -> tokenizer -> pretrain -> finetune (one run per selected task) -> evaluate -> promotion.
Stages pass paths and content digests (StageResult), never datasets or models; each is
looked up in the stage cache first. Started again after a crash, the lifecycle continues
its MLflow run and resumes pretraining and fine-tuning from their last checkpoints.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import mlflow
from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.common import (flow_config, named_after_overrides, redacting, run_cli, run_stage, run_stages, stage_runner,
                          summary_markdown)
from flows.data import data_task
from flows.evaluate import evaluate_task
from flows.finetune import finetune_task
from flows.pretrain import pretrain_task
from flows.tokenizer import tokenizer_task
from lm_tasks import lineage, promotion, tracking
from lm_tasks.cache import StageCache
from lm_tasks.redaction import redact
from lm_tasks.stage_keys import lifecycle_key


@flow(name="lifecycle", flow_run_name=named_after_overrides)
@redacting
def lifecycle(overrides: list[str] | None = None) -> dict:
    cfg = flow_config(overrides)
    gate = promotion.gate_part(cfg.promotion, list(cfg.finetune)) if cfg.promotion.enabled else None  # fail early
    Path(cfg.paths.output_dir).mkdir(parents=True, exist_ok=True)
    (Path(cfg.paths.output_dir) / "config.yaml").write_text(cfg.resolved_yaml)
    key = lifecycle_key(cfg)
    name = tracking.lifecycle_run_name(cfg, overrides or [])
    with StageCache(cfg.cache).try_exclusive(f"lifecycle-{key}") as alone, \
            tracking.lifecycle_run(cfg, key, name, alone, {"overrides": " ".join(overrides or [])}) as parent:
        run_id = parent.info.run_id
        with stage_runner(cfg.runner) as runner:
            common = {"cfg": cfg, "parent_run_id": run_id}
            data = run_stage(runner, data_task, **common)
            tokens = run_stage(runner, tokenizer_task, data=data, **common)
            pretrained = run_stage(runner, pretrain_task, tokens=tokens, **common)
            # The tasks are independent: on a Dask runner they fine-tune concurrently, one per worker.
            calls = [{"task": task, "pretrained": pretrained, **common} for task in cfg.finetune]
            tuned = dict(zip(cfg.finetune, run_stages(runner, finetune_task, calls)))
            evaluated = run_stage(runner, evaluate_task, tokens=tokens, pretrained=pretrained, tuned=tuned, **common)
        results = [data, tokens, pretrained, *tuned.values(), evaluated]

        cached = [r.stage for r in results if r.cached]
        mlflow.set_tags({"cached_stages": ",".join(cached) or "none", **lineage.tags(results)})
        cv = {k: v for r in tuned.values() for k, v in r.metrics.items() if k.endswith(("_mean", "_std"))}  # cv_folds
        tracking.log_metrics({"lifecycle/cached_stages": len(cached), "lifecycle/stages": len(results),
                              **evaluated.metrics, **cv,
                              **{f"lifecycle/{r.stage}_seconds": r.seconds for r in results}})
        url = tracking.run_url(cfg.tracking.tracking_uri, parent)
        summary = summary_markdown(f"Lifecycle `{name}`", results)
        summary += f"\nMLflow run [`{run_id}`]({url})" + (
            "" if tracking.serves_ui(cfg.tracking.tracking_uri) else
            f" (with `mlflow ui --backend-store-uri {redact(cfg.tracking.tracking_uri)}` running)") + "\n"
        summary += "\n### Evaluation\n\n" + (Path(evaluated.output_dir) / "report.md").read_text()
        decision = None
        if gate is not None:
            model = pretrained if gate == "lm" else tuned[gate]
            model_name = promotion.registered_model_name(cfg.promotion, cfg.name)
            decision = promotion.promote(cfg.promotion, model_name, evaluated.metrics, model, cfg.serving)
            promotion.record(decision)
            summary += "\n### Promotion\n\n" + promotion.markdown(decision)
        mlflow.log_text(summary, "summary.md")
        create_markdown_artifact(summary, key="lifecycle-summary", description="Stages, durations, key metrics")
        print(summary, flush=True)
        if decision is not None:
            promotion.raise_on_error(decision)  # inside the run: the lifecycle run ends FAILED, the flow Failed
    return {r.stage: asdict(r) for r in results}


def main() -> None:
    """The `lm-lifecycle` command (pyproject.toml), same as `python -m flows.lifecycle`."""
    run_cli(lifecycle)


if __name__ == "__main__":
    main()
