"""The whole lifecycle as one Prefect flow, tracked as one MLflow parent run.

    python -m flows.lifecycle [hydra overrides]
    python -m flows.lifecycle finetune=classification     # with task fine-tuning
    python -m flows.lifecycle -m optim.lr=1e-3,3e-3      # one lifecycle per sweep job

data -> tokenizer -> pretrain -> finetune (one run per selected task) -> evaluate. Stages pass
paths and content digests (StageResult), never datasets or models.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import mlflow
from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.common import run_cli, summary_markdown
from flows.data import data_task
from flows.evaluate import evaluate_task
from flows.finetune import finetune_task
from flows.pretrain import pretrain_task
from flows.tokenizer import tokenizer_task
from lm_tasks import tracking
from lm_tasks.config import load_config


@flow(name="lifecycle")
def lifecycle(overrides: list[str] | None = None) -> dict:
    cfg = load_config(overrides or [])
    Path(cfg.paths.output_dir).mkdir(parents=True, exist_ok=True)
    (Path(cfg.paths.output_dir) / "config.yaml").write_text(cfg.resolved_yaml)
    with tracking.tracked_run(cfg, "lifecycle") as parent:
        run_id = parent.info.run_id
        results = [data_task(cfg, run_id)]
        results.append(tokenizer_task(cfg, run_id))
        results.append(pretrain_task(cfg, run_id))
        results += [finetune_task(cfg, task, run_id) for task in cfg.finetune]  # finetune=<task,...>
        results.append(evaluate_task(cfg, run_id))

        tracking.log_metrics({k: v for r in results if r.stage.startswith(("finetune", "evaluate"))
                              for k, v in r.metrics.items()})
        tracking.log_metrics({f"lifecycle/{r.stage}_seconds": r.seconds for r in results})
        summary = summary_markdown(f"Lifecycle `{tracking.default_run_name(cfg)}` (MLflow run {run_id})", results)
        summary += "\n### Evaluation\n\n" + (Path(cfg.paths.eval_dir) / "report.md").read_text()
        mlflow.log_text(summary, "summary.md")
    create_markdown_artifact(summary, key="lifecycle-summary", description="Stages, durations, key metrics")
    print(summary, flush=True)
    return {r.stage: asdict(r) for r in results}


if __name__ == "__main__":
    run_cli(lifecycle)
