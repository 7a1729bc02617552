"""The lifecycle's stages as plain functions: what the Prefect flows wrap.

Each stage reads its inputs from the previous stage's folder (see conf/paths),
writes its outputs into its own folder with a `stage.json` manifest (content
digest, metrics, MLflow run id), and records everything in an MLflow run tagged
`stage=<name>`: a child of the lifecycle run, or a top-level run when the stage
runs alone.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mlflow

from lm_tasks import tracking
from lm_tasks.artifacts import file_digest, files_digest, read_json, write_json
from lm_tasks.config import LifecycleConfig
from lm_tasks.data.packing import pack_split
from lm_tasks.data.prepare import load_prepared, prepare_data
from lm_tasks.evaluation import evaluate_lm
from lm_tasks.models.io import load_pretrained
from lm_tasks.tasks.evaluate import evaluate_task
from lm_tasks.tokenizer import special_token_ids, train_tokenizer

MANIFEST = "stage.json"


@dataclass
class StageResult:
    """What a stage hands to the next: where its output is and what it contains."""

    stage: str
    output_dir: str
    digest: str
    run_id: str
    seconds: float
    metrics: dict = field(default_factory=dict)

    @property
    def key_metric(self) -> str:
        return ", ".join(f"{k}={v:.4g}" for k, v in list(self.metrics.items())[:2])


def read_stage(output_dir: str | Path, stage: str) -> StageResult:
    """The manifest a finished stage left in its folder, or a clear error."""
    path = Path(output_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"No output of the {stage} stage at {output_dir} ({MANIFEST} missing). "
            f"Run it first: python -m flows.{stage} (with the same name= and paths overrides)."
        )
    return StageResult(**read_json(path))


def run_data(cfg: LifecycleConfig, parent_run_id: str | None = None) -> StageResult:
    out = Path(cfg.paths.data_dir)
    start = time.perf_counter()
    with tracking.tracked_run(cfg, "data", parent_run_id) as run:
        stats = prepare_data(cfg.data, out, cfg.seed)
        metrics = {}
        for split, counts in stats["splits"].items():
            metrics[f"data/{split}_rows"] = counts["rows"]
            metrics[f"data/{split}_bytes"] = counts["bytes"]
        for split, steps in stats["cleaning"].items():
            for step in steps:
                metrics[f"data/{split}/{step['step']}_rows_in"] = step["rows_in"]
                metrics[f"data/{split}/{step['step']}_rows_out"] = step["rows_out"]
        tracking.log_metrics(metrics)
        mlflow.log_artifact(str(out / "stats.json"))
        return _finish("data", out, stats["digest"], run, start, metrics)


def run_tokenizer(cfg: LifecycleConfig, parent_run_id: str | None = None) -> StageResult:
    data = read_stage(cfg.paths.data_dir, "data")
    out = Path(cfg.paths.tokenizer_dir)
    start = time.perf_counter()
    with tracking.tracked_run(cfg, "tokenizer", parent_run_id, {"input.data_digest": data.digest}) as run:
        dataset = load_prepared(cfg.paths.data_dir)
        tokenizer_path = out / "tokenizer.json"
        tokenizer = train_tokenizer(dataset["train"], cfg.tokenizer, tokenizer_path)
        specials = special_token_ids(tokenizer, cfg.tokenizer)
        splits = {
            split: pack_split(dataset[split], tokenizer_path, specials.eos_id, specials.vocab_size,
                              out / f"{split}.bin", cfg.data.num_proc)
            for split in ("train", "validation")
        }
        meta = {"splits": splits, "dtype": splits["train"]["dtype"], **asdict(specials)}
        write_json(out / "meta.json", meta)
        metrics = {
            "tokenizer/vocab_size": specials.vocab_size,
            "tokenizer/train_tokens": splits["train"]["tokens"],
            "tokenizer/validation_tokens": splits["validation"]["tokens"],
            "tokenizer/bytes_per_token": splits["train"]["bytes"] / splits["train"]["tokens"],
        }
        tracking.log_metrics(metrics)
        mlflow.log_artifact(str(tokenizer_path))
        mlflow.log_artifact(str(out / "meta.json"))
        digest = files_digest([tokenizer_path, out / "train.bin", out / "validation.bin"], out)
        return _finish("tokenizer", out, digest, run, start, metrics)


def run_pretrain(cfg: LifecycleConfig, parent_run_id: str | None = None) -> StageResult:
    from lightning.pytorch.loggers import MLFlowLogger

    from lm_tasks.training.pretrain import pretrain

    tokens = read_stage(cfg.paths.tokenizer_dir, "tokenizer")
    out = Path(cfg.paths.pretrain_dir)
    start = time.perf_counter()
    with tracking.tracked_run(cfg, "pretrain", parent_run_id, {"input.tokens_digest": tokens.digest}) as run:
        logger = MLFlowLogger(tracking_uri=cfg.tracking.tracking_uri, run_id=run.info.run_id)
        summary = pretrain(cfg, tokens.output_dir, Path(tokens.output_dir) / "tokenizer.json", out, logger)
        metrics = {"pretrain/best_val_loss": summary["best_val_loss"], "pretrain/parameters": summary["parameters"]}
        tracking.log_metrics(metrics)
        mlflow.log_artifacts(summary["model_dir"], "model")
        weights = Path(summary["model_dir"]) / "model.safetensors"
        return _finish("pretrain", out, file_digest(weights), run, start, metrics)


def run_finetune(cfg: LifecycleConfig, task: str, parent_run_id: str | None = None) -> StageResult:
    from lightning.pytorch.loggers import MLFlowLogger

    from lm_tasks.training.finetune import finetune_task

    start = time.perf_counter()
    model_dir, model_digest = pretrained_model(cfg)
    out = Path(cfg.paths.finetune_dir) / task
    tags = {"task": task, "input.model_digest": model_digest}
    with tracking.tracked_run(cfg, "finetune", parent_run_id, tags) as run:
        logger = MLFlowLogger(tracking_uri=cfg.tracking.tracking_uri, run_id=run.info.run_id)
        summary = finetune_task(cfg, task, model_dir, out, logger)
        metrics = {f"finetune/{task}/{k}": v for k, v in summary.items() if k.startswith("best_val_")}
        tracking.log_metrics(metrics)
        mlflow.log_artifact(str(out / "train_summary.json"))
        mlflow.log_artifacts(str(out / "model"), "model")
        return _finish(f"finetune:{task}", out, file_digest(out / "model" / "head.safetensors"), run, start,
                       metrics)


def pretrained_model(cfg: LifecycleConfig) -> tuple[Path, str]:
    """The exported model to fine-tune: `init_from` (a folder or an MLflow run id), else this
    lifecycle's pretraining output."""
    source = cfg.init_from
    if source is None:
        pretrained = read_stage(cfg.paths.pretrain_dir, "pretrain")
        return Path(pretrained.output_dir) / "model", pretrained.digest
    if Path(source).is_dir():
        model_dir = Path(source)
    else:
        tracking.configure(cfg.tracking)
        try:
            model_dir = Path(mlflow.artifacts.download_artifacts(run_id=source, artifact_path="model"))
        except Exception as err:
            raise FileNotFoundError(
                f"init_from={source!r} is neither a model folder nor an MLflow run with a 'model' "
                f"artifact in {cfg.tracking.tracking_uri}: {err}"
            ) from err
    return model_dir, file_digest(model_dir / "model.safetensors")


def run_evaluate(cfg: LifecycleConfig, parent_run_id: str | None = None) -> StageResult:
    """The pretrained LM on held-out text, then every selected fine-tuned task; one report."""
    pretrained = read_stage(cfg.paths.pretrain_dir, "pretrain")
    tokens = read_stage(cfg.paths.tokenizer_dir, "tokenizer")
    tuned = {task: read_stage(Path(cfg.paths.finetune_dir) / task, f"finetune task={task}") for task in cfg.finetune}
    out = Path(cfg.paths.eval_dir)
    start = time.perf_counter()
    tags = {"task": ",".join(["lm", *cfg.finetune]), "input.model_digest": pretrained.digest,
            "input.tokens_digest": tokens.digest, **{f"input.{t}_digest": r.digest for t, r in tuned.items()}}
    with tracking.tracked_run(cfg, "evaluate", parent_run_id, tags) as run:
        model = load_pretrained(Path(pretrained.output_dir) / "model")
        lm, samples = evaluate_lm(model, tokens.output_dir, Path(tokens.output_dir) / "tokenizer.json",
                                  cfg.eval, cfg.seed)
        out.mkdir(parents=True, exist_ok=True)
        (out / "samples.jsonl").write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
        report = {"lm": {"metrics": lm, "baseline": {k.removeprefix("unigram_"): v for k, v in lm.items()
                                                     if k.startswith("unigram_")}}}
        for task, result in tuned.items():
            report[task] = evaluate_task(cfg, task, Path(result.output_dir) / "model", out / task)
            mlflow.log_artifacts(str(out / task), task)
        metrics = _numbers(lm, "eval/lm/")
        for task in tuned:
            metrics.update(_numbers(report[task]["metrics"], f"eval/{task}/"))
            metrics.update(_numbers(report[task]["baseline"], f"eval/{task}/baseline_"))
        tracking.log_metrics(metrics)
        write_json(out / "report.json", report)
        (out / "report.md").write_text(report_markdown(report))
        for name in ("report.json", "report.md", "samples.jsonl"):
            mlflow.log_artifact(str(out / name))
        return _finish("evaluate", out, file_digest(out / "report.json"), run, start, metrics)


def report_markdown(report: dict) -> str:
    """One table: every task's metrics beside its trivial baseline."""
    lines = ["| task | metric | model | baseline |", "|---|---|---|---|"]
    for task, result in report.items():
        for name, value in result["metrics"].items():
            if isinstance(value, (int, float)) and not name.startswith("unigram_"):
                baseline = result["baseline"].get(name)
                shown = f"{baseline:.4g}" if isinstance(baseline, (int, float)) else "-"
                lines.append(f"| {task} | {name} | {value:.4g} | {shown} |")
    return "\n".join(lines) + "\n"


def _numbers(values: dict, prefix: str) -> dict:
    return {f"{prefix}{k}": v for k, v in values.items() if isinstance(v, (int, float))}


def _finish(stage: str, out: Path, digest: str, run, start: float, metrics: dict) -> StageResult:
    result = StageResult(stage, str(out), digest, run.info.run_id, round(time.perf_counter() - start, 2),
                         {k: float(v) for k, v in metrics.items()})
    write_json(out / MANIFEST, asdict(result))
    mlflow.set_tag("output.digest", digest)
    return result
