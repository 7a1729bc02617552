"""The lifecycle's stages as plain functions: what the Prefect flows wrap.

    data -> tokenizer -> pretrain -> finetune:<task> ... -> evaluate

Every stage is content-addressed (lm_tasks/cache.py): its key (lm_tasks/stage_keys.py) is a
digest of the config keys it reads, the code it runs and the content digests of its inputs. A
stage whose key is in the cache, with its files intact, is not run again: its
earlier result comes back with `cached=True`. Otherwise it runs inside an MLflow
run tagged `stage=<name>` (a child of the lifecycle run, or top level when the
stage runs alone) and its output folder is committed to the cache.

Stages hand each other `StageResult`s (folders and digests), never data or models.
A stage run alone finds its inputs by their keys: `find(cfg, "pretrain")`.
`paths.<stage>_dir` is a link to the latest output for browsing; nothing reads it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import mlflow

from lm_tasks import lineage, tracking
from lm_tasks.artifacts import file_digest, files_digest, replace, write_json
from lm_tasks.cache import Entry, StageCache, file_lock, local_root, stage_key
from lm_tasks.config import LifecycleConfig
from lm_tasks.retry import retry_transient
from lm_tasks.stage_keys import (data_key, evaluate_key, finetune_key, is_hf_checkpoint, lm_eval_key, pretrain_key,
                                 task_eval_key, tokenizer_key)
from lm_tasks.stage_log import LOG_NAME, stage_log

log = logging.getLogger(__name__)

TRAINING = ("pretrain", "finetune")  # the stages whose runs record system metrics (tracking.system_metrics)


@dataclass
class StageResult:
    """What a stage hands to the next: where its output is and what it contains."""

    stage: str
    output_dir: str
    digest: str
    run_id: str
    seconds: float
    metrics: dict = field(default_factory=dict)
    key: str = ""
    cached: bool = False
    inputs: dict = field(default_factory=dict)  # input name -> the content digest it had (data, tokens, model...)

    @property
    def key_metric(self) -> str:
        return ", ".join(f"{k}={v:.4g}" for k, v in list(self.metrics.items())[:2])


class MissingStageError(FileNotFoundError):
    """A stage run alone whose input stage has no cached output for this config."""


# --- the stages ----------------------------------------------------------------------


def run_data(cfg: LifecycleConfig, parent_run_id: str | None = None) -> StageResult:
    def compute(out: Path) -> tuple[str, dict]:
        from lm_tasks.data.prepare import prepare_data
        from lm_tasks.data.report import FILES

        report = prepare_data(cfg.data, out, cfg.seed, _decontamination_sets(cfg), _task_training_texts(cfg))
        metrics = {}
        for split, counts in report["splits"].items():
            metrics[f"data/{split}_rows"] = counts["rows"]
            metrics[f"data/{split}_bytes"] = counts["bytes"]
        for split, steps in report["steps"].items():
            for step in steps:
                prefix = f"data/{split}/{step['step']}"
                metrics.update({f"{prefix}_rows_out": step["rows_out"], f"{prefix}_bytes_out": step["bytes_out"],
                                f"{prefix}_dropped": step["rows_in"] - step["rows_out"]})
                for reason, rows in step["dropped"].items():  # per rule
                    metrics.update({f"{prefix}/{reason}_rows": rows,
                                    f"{prefix}/{reason}_bytes": step["dropped_bytes"][reason]})
        for name in (*FILES, "manifest.json"):
            mlflow.log_artifact(str(out / name))
        tracking.log_dataset(report["digest"], cfg.data, Path(cfg.paths.data_dir))  # where it will be
        return report["digest"], metrics

    return _run_stage(cfg, "data", data_key(cfg), {}, compute, parent_run_id)


def _decontamination_sets(cfg: LifecycleConfig) -> dict[str, list[str]]:
    """The evaluation texts of the selected fine-tuning tasks (name -> texts)."""
    if not (cfg.data.cleaning.decontamination.enabled and cfg.data.cleaning.decontamination.tasks):
        return {}
    from lm_tasks.tasks.data import evaluation_texts

    return {f"finetune.{task}": evaluation_texts(cfg.finetune[task], cfg.seed) for task in cfg.finetune}


def _task_training_texts(cfg: LifecycleConfig) -> dict[str, list[str]]:
    """The training text of the selected fine-tuning tasks (name -> documents) when
    `data.mix.tasks` adds it to pretraining."""
    if cfg.data.mix.tasks <= 0:
        return {}
    from lm_tasks.tasks.data import training_texts

    return {f"finetune.{task}": training_texts(cfg.finetune[task], cfg.seed) for task in cfg.finetune}


def run_tokenizer(cfg: LifecycleConfig, data: StageResult | None = None,
                  parent_run_id: str | None = None) -> StageResult:
    data = data or find(cfg, "data")

    def compute(out: Path) -> tuple[str, dict]:
        from lm_tasks.data.packing import pack_split
        from lm_tasks.data.prepare import load_prepared, row_mapper
        from lm_tasks.tokenizer import special_token_ids, train_tokenizer

        dataset = load_prepared(data.output_dir)
        tokenizer_path = out / "tokenizer.json"
        tokenizer = train_tokenizer(dataset["train"], cfg.tokenizer, tokenizer_path)
        specials = special_token_ids(tokenizer, cfg.tokenizer)
        scratch = out / ".partitions"  # tokenised partitions (data.executor=dask); not part of the entry
        try:
            with row_mapper(cfg.data, scratch) as mapper:
                splits = {split: pack_split(dataset[split], tokenizer_path, specials.eos_id, specials.vocab_size,
                                            out / f"{split}.bin", mapper=mapper)
                          for split in ("train", "validation")}
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        write_json(out / "meta.json", {"splits": splits, "dtype": splits["train"]["dtype"], **asdict(specials)})
        mlflow.log_artifact(str(tokenizer_path))
        mlflow.log_artifact(str(out / "meta.json"))
        metrics = {
            "tokenizer/vocab_size": specials.vocab_size,
            "tokenizer/train_tokens": splits["train"]["tokens"],
            "tokenizer/validation_tokens": splits["validation"]["tokens"],
            "tokenizer/bytes_per_token": splits["train"]["bytes"] / splits["train"]["tokens"],
        }
        return files_digest([tokenizer_path, out / "train.bin", out / "validation.bin"], out), metrics

    return _run_stage(cfg, "tokenizer", tokenizer_key(cfg, data.digest), {"input.data_digest": data.digest},
                      compute, parent_run_id)


def run_pretrain(cfg: LifecycleConfig, tokens: StageResult | None = None,
                 parent_run_id: str | None = None) -> StageResult:
    """Pretrain; a run interrupted earlier (even by SIGKILL) resumes from its last checkpoint
    and continues its MLflow run."""
    tokens = tokens or find(cfg, "tokenizer")

    def compute(out: Path) -> tuple[str, dict]:
        from lm_tasks.evaluation import unigram_loss
        from lm_tasks.model_card import pretrained_card
        from lm_tasks.training.launch import run_training

        start = time.perf_counter()
        inputs = {"tokens_dir": tokens.output_dir, "tokenizer_path": Path(tokens.output_dir) / "tokenizer.json"}
        run_id = mlflow.active_run().info.run_id
        if cfg.eval.checkpoints.enabled and cfg.model.trainable:
            from lm_tasks.checkpoint_publisher import beside_training

            key = out.name.split(".")[0]
            inputs["snapshots_dir"] = local_root(cfg.cache) / ".snapshots" / f"pretrain-{key}"
            if not (out / "checkpoints" / "last.ckpt").is_file():  # training starts over: so do its snapshots
                shutil.rmtree(inputs["snapshots_dir"], ignore_errors=True)
            with beside_training(cfg, Path(inputs["snapshots_dir"]), tokens, key, run_id, out):
                summary = run_training(cfg, "pretrain", inputs, out, cfg.tracking.tracking_uri, run_id)
            if (out / "evaluator.log").is_file():
                mlflow.log_artifact(str(out / "evaluator.log"), "ckpt")
        else:
            summary = run_training(cfg, "pretrain", inputs, out, cfg.tracking.tracking_uri, run_id)
        _log_profile(out)
        meta = json.loads((Path(tokens.output_dir) / "meta.json").read_text())
        baseline = unigram_loss(tokens.output_dir, meta["vocab_size"])
        seconds = time.perf_counter() - start

        def card(library: str) -> str:
            return pretrained_card(cfg, summary, meta, tokens.inputs.get("data"), baseline, seconds, library)

        def log_model() -> None:
            _log_exported(Path(summary["model_dir"]), out / "hf", card)
            _log_pyfunc(summary["model_dir"], cfg)

        # Training is the costly part: a tracking server away just now is waited for.
        retry_transient(log_model, "Logging the pretrained model", _patience_s(cfg))
        metrics = {"pretrain/best_val_loss": summary["best_val_loss"], "pretrain/parameters": summary["parameters"]}
        return file_digest(Path(summary["model_dir"]) / "model.safetensors"), metrics

    result = _run_stage(cfg, "pretrain", pretrain_key(cfg, tokens.digest), {"input.tokens_digest": tokens.digest},
                        compute, parent_run_id, resume=True)
    if result.cached and cfg.eval.checkpoints.enabled:
        _catch_up_checkpoints(cfg, result, tokens)
    return result


def _catch_up_checkpoints(cfg: LifecycleConfig, pretrained: StageResult, tokens: StageResult) -> None:
    """Score the checkpoints of a cached pretraining that no evaluator scored (it was killed, or
    no worker took the events) and log them into that pretraining's run."""
    from lm_tasks import checkpoint_eval

    listed = checkpoint_eval.listing(Path(pretrained.output_dir))
    if not listed:
        return
    tracking.configure(cfg.tracking)
    try:
        scored = checkpoint_eval.catch_up(StageCache(cfg.cache), listed, Path(tokens.output_dir), tokens.digest,
                                          checkpoint_eval.Settings.of(cfg), pretrained.run_id)
    except Exception as err:  # the cached result stands without its curve
        log.warning("checkpoint catch-up failed (%s: %s)", type(err).__name__, err)
        return
    if scored:
        log.info("pretrain: caught up %d checkpoint evaluation(s) of run %s", scored, pretrained.run_id)


def run_checkpoint_evaluation(cfg: LifecycleConfig, run_id: str, step: int, digest: str, tokens_key: str) -> dict:
    """One announced checkpoint (a `lm-tasks.checkpoint.saved` event's payload), evaluated here,
    from this machine's cache or its shared store, and logged into the pretraining run
    `run_id` at `step`, with the curve redrawn. Its metrics. The payload is not trusted."""
    from lm_tasks import checkpoint_eval

    if not re.fullmatch(r"[0-9a-f]{32}", run_id) or not all(
            checkpoint_eval.DIGEST.fullmatch(value) for value in (digest, tokens_key)) or int(step) < 0:
        raise ValueError(f"not a checkpoint announcement: run_id={run_id!r} step={step!r} digest={digest!r} "
                         f"tokens_key={tokens_key!r}")
    cache = StageCache(cfg.cache)
    tokens, snapshot = cache.lookup("tokenizer", tokens_key), cache.lookup(checkpoint_eval.SNAPSHOT_STAGE, digest)
    for what, entry in (("tokenizer", tokens), ("snapshot", snapshot)):
        if entry is None:
            raise FileNotFoundError(f"the {what} entry of checkpoint {step} is in neither {cache.local} nor the "
                                    f"cache store {cfg.cache.store!r}: is this worker's cache.store the training's?")
    tokens_digest = str(tokens.manifest.get("digest", ""))
    result = checkpoint_eval.evaluate_checkpoint(cache, snapshot.path, digest, int(step), tokens.path, tokens_digest,
                                                 checkpoint_eval.Settings.of(cfg))
    tracking.configure(cfg.tracking)
    checkpoint_eval.log_result(run_id, {**result, "step": int(step)})
    checkpoint_eval.log_curve(run_id)
    return {checkpoint_eval.PREFIX + k: v for k, v in result["metrics"].items()}


def run_finetune(cfg: LifecycleConfig, task: str, pretrained: StageResult | None = None,
                 parent_run_id: str | None = None) -> StageResult:
    """Fine-tune; as pretraining, a run interrupted earlier resumes from its last checkpoint and
    continues its MLflow run. Cross-validation folds are not resumed: they start over."""
    model_dir, model_digest = pretrained_model(cfg, pretrained)

    def compute(out: Path) -> tuple[str, dict]:
        from lm_tasks.model_card import finetuned_card
        from lm_tasks.training.launch import run_training

        start = time.perf_counter()
        cv = _cross_validate(cfg, task, model_dir, out) if cfg.finetune[task].cv_folds else {}
        summary = run_training(cfg, "finetune", {"task": task, "pretrained_dir": model_dir}, out,
                               cfg.tracking.tracking_uri, mlflow.active_run().info.run_id)
        mlflow.log_artifact(str(out / "train_summary.json"))
        _log_profile(out)
        seconds = time.perf_counter() - start
        _log_exported(out / "model", out / "hf",  # hf/: the fine-tuned backbone
                      lambda library: finetuned_card(cfg, task, summary, model_digest, seconds, library))
        if task == "classification":  # the task models lm_tasks.serving can serve
            _log_pyfunc(out / "model", cfg)
        metrics = {f"finetune/{task}/{k}": v for k, v in summary.items() if k.startswith("best_val_")}
        return file_digest(out / "model" / "head.safetensors"), {**metrics, **cv}

    tags = {"task": task, "input.model_digest": model_digest}
    return _run_stage(cfg, f"finetune:{task}", finetune_key(cfg, task, model_digest), tags, compute,
                      parent_run_id, resume=True)


def _cross_validate(cfg: LifecycleConfig, task: str, model_dir: Path, out: Path) -> dict:
    """k-fold cross-validation before the final model (finetune.<task>.cv_folds): each fold's
    scores logged as `cv/<task>/<metric>` at step=fold, a report `cross_validation.md`, and
    `eval/<task>/<metric>_mean`, `_std` returned as stage metrics (so a cached result has them)."""
    from lm_tasks.tasks.cross_validation import cross_validate, report_markdown, summarize

    scores = cross_validate(cfg, task, model_dir, out / "cv", cfg.tracking.tracking_uri,
                            mlflow.active_run().info.run_id)
    for fold, metrics in enumerate(scores):
        tracking.log_metrics(metrics, prefix=f"cv/{task}/", step=fold)
    summary = summarize(scores)
    (out / "cross_validation.md").write_text(report_markdown(task, scores, summary))
    mlflow.log_artifact(str(out / "cross_validation.md"))
    return {f"eval/{task}/{name}": value for name, value in summary.items()}


def _log_profile(out: Path) -> None:
    """The profiler's report (trainer.profiler), when one ran."""
    if (out / "profile").is_dir():
        mlflow.log_artifacts(str(out / "profile"), "profile")


def _log_exported(model_dir: Path, hf_dir: Path, card: Callable[[str], str]) -> None:
    """The exported model (artifact `model/`) and, where it maps onto GPT-2, the same model in
    Hugging Face format (artifact `hf/`; otherwise skipped, the reason logged: another family,
    or an option GPT-2 cannot express such as rotary positions). Each with its model card,
    `card(library)` for the library that loads it."""
    from lm_tasks.model_card import write_card
    from lm_tasks.models.hf import export_hf, exports_to_hf

    write_card(model_dir, card("lm-tasks"))
    mlflow.log_artifacts(str(model_dir), "model")
    if exports_to_hf(model_dir):
        exported = export_hf(model_dir, hf_dir)
        write_card(exported, card("transformers"))
        mlflow.log_artifacts(str(exported), "hf")


def _log_pyfunc(model_dir: str | Path, cfg: LifecycleConfig) -> None:
    """The model as an MLflow pyfunc of the active run (prompts in, generations out; or texts
    in, labels and scores out), its requests bounded by `serving.*`; the promotion step
    registers it from the run's tag."""
    from lm_tasks.serving import log_model

    info = log_model(model_dir, cfg.serving, name="pyfunc")
    mlflow.set_tags({"pyfunc.model_uri": info.model_uri, "pyfunc.model_id": info.model_id})


def pretrained_model(cfg: LifecycleConfig, pretrained: StageResult | None = None) -> tuple[Path, str]:
    """The exported model to fine-tune: `init_from` (one of our model folders, a Hugging Face
    GPT-2 checkpoint folder or Hub id, or an MLflow run id), else this lifecycle's pretraining."""
    source = cfg.init_from
    if source is None:
        pretrained = pretrained or find(cfg, "pretrain")
        return Path(pretrained.output_dir) / "model", pretrained.digest
    if source.startswith(BEST):
        return _best_checkpoint(cfg, source, pretrained or find(cfg, "pretrain"))
    if is_hf_checkpoint(source):
        model_dir = _converted_gpt2(cfg, source)
    elif Path(source).is_dir():
        model_dir = Path(source)
    else:
        tracking.configure(cfg.tracking)
        try:
            model_dir = Path(mlflow.artifacts.download_artifacts(run_id=source, artifact_path="model"))
        except Exception as err:
            raise FileNotFoundError(
                f"init_from={source!r} is neither a model folder, a Hugging Face GPT-2 checkpoint (folder or "
                f"hf:<hub id>) nor an MLflow run with a 'model' artifact in {cfg.tracking.tracking_uri}: {err}"
            ) from err
    return model_dir, file_digest(model_dir / "model.safetensors")


BEST = "best:"  # init_from=best:<metric>[:min|max], a checkpoint of this lifecycle's pretraining


def _best_checkpoint(cfg: LifecycleConfig, source: str, pretrained: StageResult) -> tuple[Path, str]:
    """The snapshot of this lifecycle's pretraining whose checkpoint evaluation was best on a
    metric (eval.checkpoints), e.g. best:ckpt/bpb or best:ckpt/probe_sentiment_accuracy; the
    direction is `min` for losses, `max` for accuracies and scores, or given as a suffix."""
    from lm_tasks import checkpoint_eval

    metric, _, mode = source.removeprefix(BEST).partition(":")
    mode = mode or checkpoint_eval.direction(metric)
    if mode not in ("min", "max"):
        raise ValueError(f"init_from={source!r}: the direction after the metric is min or max, not {mode!r}")
    tracking.configure(cfg.tracking)
    listed = checkpoint_eval.listing(Path(pretrained.output_dir))
    best = checkpoint_eval.best_checkpoint(pretrained.run_id, listed, metric, mode)
    entry = StageCache(cfg.cache).lookup(checkpoint_eval.SNAPSHOT_STAGE, best["digest"])
    if entry is None or file_digest(entry.path / "model.safetensors") != best["digest"]:
        raise FileNotFoundError(f"init_from={source!r}: the checkpoint of step {best['step']} ({best['digest'][:12]}) "
                                f"is not in the cache ({cfg.cache.store}) or not intact: run the pretraining again "
                                "with eval.checkpoints.enabled=true (cache.refresh=pretrain)")
    log.info("finetune: from the checkpoint of step %d, best on %s (%s %.4f)", best["step"], metric, mode, best["value"])
    return entry.path, best["digest"]


def _converted_gpt2(cfg: LifecycleConfig, source: str) -> Path:
    """GPT-2 weights and tokenizer in our format, converted once per source."""
    from lm_tasks.models.hf import load_gpt2

    origin = source.removeprefix("hf:")
    where = Path(origin).resolve() if Path(origin).is_dir() else origin
    out = Path(cfg.paths.output_dir) / "init_from" / stage_key("init_from", {"source": str(where)}, [], {})[:16]
    out.parent.mkdir(parents=True, exist_ok=True)
    # Fine-tuning tasks running at once (Dask workers) convert once: a second conversion would
    # replace the folder while the first task reads it.
    with file_lock(out.with_name(f"{out.name}.lock")):
        if not (out / "model.safetensors").is_file():
            load_gpt2(origin, out)
    return out


def run_evaluate(cfg: LifecycleConfig, tokens: StageResult | None = None, pretrained: StageResult | None = None,
                 tuned: dict[str, StageResult] | None = None, parent_run_id: str | None = None) -> StageResult:
    """The pretrained LM on held-out text, then every selected fine-tuned task; one report.

    Each part (the LM, each task) is cached on its own, so a changed task re-evaluates
    only that task; the report is put together from all parts.
    """
    tokens = tokens or find(cfg, "tokenizer")
    pretrained = pretrained or find(cfg, "pretrain")
    tuned = tuned if tuned is not None else {task: find(cfg, "finetune", task) for task in cfg.finetune}
    parts = {"lm": lm_eval_key(cfg, tokens.digest, pretrained.digest),
             **{task: task_eval_key(cfg, task, result.digest) for task, result in tuned.items()}}
    cache = StageCache(cfg.cache)

    def compute(out: Path) -> tuple[str, dict]:
        report, cached = {}, []
        for part, key in parts.items():
            entry = cache.reusable(f"evaluate:{part}", key)
            if entry is None:
                with cache.claim(f"evaluate:{part}", key) as work:
                    _evaluate_part(cfg, part, work, tokens, pretrained, tuned)
                    entry = cache.commit(f"evaluate:{part}", key, work, {"part": part})
            else:
                cached.append(part)
            shutil.copytree(entry.path, out / part, ignore=shutil.ignore_patterns("stage.json"))
            report[part] = json.loads((out / part / "metrics.json").read_text())
        mlflow.set_tag("cached_parts", ",".join(cached) or "none")
        write_json(out / "report.json", report)
        (out / "report.md").write_text(report_markdown(report))
        mlflow.log_artifacts(str(out))
        metrics = {}
        for part, result in report.items():
            metrics.update(_numbers(result["metrics"], f"eval/{part}/"))
            metrics.update(_numbers(result["baseline"], f"eval/{part}/baseline_"))
        return file_digest(out / "report.json"), metrics

    tags = {"task": ",".join(parts), "input.model_digest": pretrained.digest, "input.tokens_digest": tokens.digest,
            **{f"input.{task}_digest": result.digest for task, result in tuned.items()}}
    key = evaluate_key(parts)
    return _run_stage(cfg, "evaluate", key, tags, compute, parent_run_id)


def _evaluate_part(cfg: LifecycleConfig, part: str, out: Path, tokens: StageResult, pretrained: StageResult,
                   tuned: dict[str, StageResult]) -> None:
    from lm_tasks.evaluation import evaluate_lm
    from lm_tasks.models.io import load_pretrained
    from lm_tasks.tasks.evaluate import evaluate_task
    from lm_tasks.training.device import compute_device

    if part != "lm":
        evaluate_task(cfg, part, Path(tuned[part].output_dir) / "model", out)
        return
    device = compute_device(cfg.trainer.accelerator, cfg.trainer.devices)  # where training ran
    model = load_pretrained(Path(pretrained.output_dir) / "model", device=device)
    lm, samples = evaluate_lm(model, tokens.output_dir, Path(tokens.output_dir) / "tokenizer.json", cfg.eval, cfg.seed)
    (out / "samples.jsonl").write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
    baseline = {k.removeprefix("unigram_"): v for k, v in lm.items() if k.startswith("unigram_")}
    metrics = {k: v for k, v in lm.items() if not k.startswith("unigram_")}
    write_json(out / "metrics.json", {"task": "lm", "metrics": metrics, "baseline": baseline, "device": str(device)})


def report_markdown(report: dict) -> str:
    """One table: every task's metrics beside its trivial baseline."""
    lines = ["| task | metric | model | baseline |", "|---|---|---|---|"]
    for task, result in report.items():
        for name, value in result["metrics"].items():
            if isinstance(value, (int, float)):
                baseline = result["baseline"].get(name)
                shown = f"{baseline:.4g}" if isinstance(baseline, (int, float)) else "-"
                lines.append(f"| {task} | {name} | {value:.4g} | {shown} |")
    return "\n".join(lines) + "\n"


def _numbers(values: dict, prefix: str) -> dict:
    return {f"{prefix}{k}": v for k, v in values.items() if isinstance(v, (int, float))}


# --- finding and running stages through the cache ----------------------------------------


def find(cfg: LifecycleConfig, stage: str, task: str | None = None) -> StageResult:
    """The cached result of `stage` for this config (its inputs found the same way), or a
    clear error saying which stage to run first."""
    cache = StageCache(cfg.cache)
    if stage == "data":
        name, key = "data", data_key(cfg)
    elif stage == "tokenizer":
        name, key = "tokenizer", tokenizer_key(cfg, find(cfg, "data").digest)
    elif stage == "pretrain":
        name, key = "pretrain", pretrain_key(cfg, find(cfg, "tokenizer").digest)
    elif stage == "finetune":
        name, key = f"finetune:{task}", finetune_key(cfg, task, pretrained_model(cfg)[1])
    else:
        raise ValueError(f"Unknown stage {stage!r}")
    entry = cache.lookup(name, key)
    if entry is None:
        command = f"python -m flows.{stage}" + (f" task={task}" if task else "")
        raise MissingStageError(
            f"No cached output of the {name} stage for this configuration (key {key[:12]}) in "
            f"{cfg.cache.store}. Run it first with the same overrides: {command} ..."
        )
    return _result(entry)


def _run_stage(cfg: LifecycleConfig, stage: str, key: str, tags: dict,
               compute: Callable[[Path], tuple[str, dict]], parent_run_id: str | None,
               resume: bool = False) -> StageResult:
    """The cached result for `key`, or run `compute(work_dir)` in a tracked run and commit it.

    `compute` writes the stage's files into work_dir, logs its artifacts and returns the
    output's content digest and its metrics.
    """
    cache = StageCache(cfg.cache)
    entry = cache.reusable(stage, key)
    if entry is None:
        resume = resume and not cache.wants_refresh(stage)  # a refresh starts over
        with cache.claim(stage, key, resume=resume) as work:
            entry = cache.reusable(stage, key)  # computed by a concurrent job while we waited
            if entry is None:
                start = time.perf_counter()
                resume_from = work / "mlflow_run.json" if resume else None
                training = stage.split(":")[0] in TRAINING
                with tracking.tracked_run(cfg, stage, parent_run_id, {**tags, "cache_key": key},
                                          resume_from=resume_from, system_metrics=training) as run:
                    with stage_log(work / LOG_NAME, stage):
                        digest, metrics = compute(work)
                    retry_transient(lambda: (tracking.log_metrics(metrics), mlflow.set_tag("output.digest", digest)),
                                    f"Logging the {stage} stage's results", _patience_s(cfg))
                    inputs = lineage.input_digests(tags)
                    result = StageResult(stage, str(cache.entry_dir(stage, key)), digest, run.info.run_id,
                                         round(time.perf_counter() - start, 2),
                                         {k: float(v) for k, v in metrics.items()}, key, inputs=inputs)
                    entry = cache.commit(stage, key, work, asdict(result))
                    _link_latest(cfg, stage, entry.path)
                    return result
    _link_latest(cfg, stage, entry.path)
    return _result(entry)


def _made_by_us(link: Path, cache_root: Path) -> bool:
    if not link.is_symlink():
        return False
    return Path(os.readlink(link)).is_relative_to(cache_root.resolve())  # links are made to resolved paths


def _patience_s(cfg: LifecycleConfig) -> float:
    return 60 * cfg.tracking.outage_patience_minutes


def _result(entry: Entry) -> StageResult:
    """A cached entry's result. Its folder is where the entry is on this machine, not the
    `output_dir` its manifest recorded on the machine that computed it (a shared store)."""
    known = {f.name for f in fields(StageResult)}
    return StageResult(**{**{k: v for k, v in entry.manifest.items() if k in known},
                          "output_dir": str(entry.path), "cached": True})


def _link_latest(cfg: LifecycleConfig, stage: str, target: Path) -> None:
    """Point paths.<stage>_dir (finetune_dir/<task> for a task) at the stage's latest output.
    Only a link into the cache (one this function made) is ever replaced: never a real
    folder or someone else's link."""
    cache_root = local_root(cfg.cache)
    family, _, task = stage.partition(":")
    folder = {"data": cfg.paths.data_dir, "tokenizer": cfg.paths.tokenizer_dir, "pretrain": cfg.paths.pretrain_dir,
              "finetune": cfg.paths.finetune_dir, "evaluate": cfg.paths.eval_dir}[family]
    link = Path(folder) / task if task else Path(folder)
    link.parent.mkdir(parents=True, exist_ok=True)
    if (link.exists() or link.is_symlink()) and not _made_by_us(link, cache_root):
        log.warning("Not linking %s to the latest %s output: it is not a link this project made (it points "
                    "outside the cache, or is a real folder or file); the output is at %s", link, stage, target)
        return
    tmp = link.with_name(f".{link.name}.{os.getpid()}.link")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target.resolve(), target_is_directory=True)
    replace(tmp, link)  # atomic: concurrent jobs never see a missing link
