"""What each stage's output depends on: its cache key (lm_tasks/cache.py).

A key is a digest of the config keys the stage reads, the library code it runs and the
content digests of its inputs (an earlier stage's output, data files), never their paths.
A stage's key can only be known once its inputs exist: the tokenizer's key needs the
digest of the data stage's output. Kept free of MLflow, Prefect and torch, so that
`python -m flows.plan` computes every key in a moment.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from lm_tasks.artifacts import files_digest
from lm_tasks.cache import stage_key
from lm_tasks.config import LifecycleConfig
from lm_tasks.data.files import expand_files
from lm_tasks.stamps import Stamps

# Trainer keys that change how a run is logged, fed or launched, never what it learns.
NOT_IN_KEY = {"name", "license", "log_every_n_steps", "enable_progress_bar", "num_workers", "num_proc", "launcher",
              "rdzv_endpoint", "profiler", "peak_tflops", "executor", "dask_address", "partitions"}


def data_key(cfg: LifecycleConfig) -> str:
    data = _without(asdict(cfg.data), NOT_IN_KEY)
    inputs = {}
    if cfg.data.source == "local":  # the files' content, not their names
        inputs["files"] = _files_digest(cfg, cfg.data.files + cfg.data.validation_files, "data.files")
    config = {"data": data, "seed": cfg.seed}
    decontamination = cfg.data.cleaning.decontamination
    # the tasks' evaluation sets (decontamination) and training text (data.mix.tasks) are inputs
    if ((decontamination.enabled and decontamination.tasks) or cfg.data.mix.tasks > 0) and cfg.finetune:
        config["tasks"] = {name: {"task": cfg.finetune[name].task, "data": _task_data(cfg, name)}
                           for name in cfg.finetune}
        inputs.update({task: task_files(cfg, task).get("files", "") for task in cfg.finetune})
    return stage_key("data", config, ["data", "artifacts.py", "tasks/data.py", "tasks/embedded.py"], inputs)


def tokenizer_key(cfg: LifecycleConfig, data_digest: str) -> str:
    return stage_key("tokenizer", {"tokenizer": asdict(cfg.tokenizer)}, ["tokenizer", "data/packing.py"],
                     {"data": data_digest})


def pretrain_key(cfg: LifecycleConfig, tokens_digest: str) -> str:
    config = {"model": asdict(cfg.model), "optim": asdict(cfg.optim), "seed": cfg.seed,
              "trainer": _without(asdict(cfg.trainer), NOT_IN_KEY)}
    return stage_key("pretrain", config, ["models", "training", "evaluation.py", "data/datamodule.py",
                                          "data/packing.py"],
                     {"tokens": tokens_digest})


def finetune_key(cfg: LifecycleConfig, task: str, model_digest: str) -> str:
    return stage_key(f"finetune:{task}", task_config(cfg, task),
                     ["models", "training", "tasks", "metrics", "data/datamodule.py"],  # its sampler
                     {"model": model_digest, **task_files(cfg, task)})


def lm_eval_key(cfg: LifecycleConfig, tokens_digest: str, model_digest: str) -> str:
    """The language model's part of the evaluation (cached on its own)."""
    config = _without(asdict(cfg.eval), {"checkpoints"})  # evaluation during training changes no final score
    return stage_key("evaluate:lm", {"eval": config, "seed": cfg.seed}, ["evaluation.py", "models"],
                     {"model": model_digest, "tokens": tokens_digest})


def task_eval_key(cfg: LifecycleConfig, task: str, tuned_digest: str) -> str:
    """One fine-tuned task's part of the evaluation (cached on its own)."""
    config = task_config(cfg, task)
    del config["task"]["cv_folds"]  # cross-validation leaves the final model as it is
    return stage_key(f"evaluate:{task}", {**config, "eval": _without(asdict(cfg.eval), {"checkpoints"})},
                     ["models", "tasks", "metrics"], {"model": tuned_digest, **task_files(cfg, task)})


def evaluate_key(parts: dict[str, str]) -> str:
    """The evaluation report's key: the keys of its parts (part name -> key)."""
    return stage_key("evaluate", {}, [], parts)


def lifecycle_key(cfg: LifecycleConfig) -> str:
    """Identifies a lifecycle's configuration (not where it is tracked or cached): an
    unfinished MLflow run with the same key is continued rather than started anew."""
    where = ("paths", "tracking", "cache", "runner", "search", "resolved_yaml")
    config = {k: v for k, v in asdict(cfg).items() if k not in where}
    config["data"] = _without(config["data"], NOT_IN_KEY)  # e.g. data.executor follows the runner
    return stage_key("lifecycle", config, ["."], {})


def is_hf_checkpoint(source: str) -> bool:
    """Whether `init_from` names a Hugging Face checkpoint, converted before use (so its key is
    the converted weights'): `hf:<hub id>`, or a folder whose config.json names a model type."""
    if source.startswith("hf:"):
        return True
    config = Path(source) / "config.json"
    try:
        return config.is_file() and "model_type" in json.loads(config.read_text())
    except (OSError, ValueError):
        return False


def task_config(cfg: LifecycleConfig, task: str) -> dict:
    trainer = {k: v for k, v in asdict(cfg.trainer).items()
               if k in ("accelerator", "devices", "strategy", "num_nodes", "precision", "gradient_clip_val")}
    return {"task": {**asdict(cfg.finetune[task]), "data": _task_data(cfg, task)}, "trainer": trainer,
            "sep_token": cfg.tokenizer.sep_token, "seed": cfg.seed}


def _task_data(cfg: LifecycleConfig, task: str) -> dict:
    return _without(asdict(cfg.finetune[task].data), {"license"})  # a licence changes no output


def task_files(cfg: LifecycleConfig, task: str) -> dict:
    data = cfg.finetune[task].data
    if data.source != "local":
        return {}
    files = data.train_files + data.validation_files + data.test_files
    return {"files": _files_digest(cfg, files, f"finetune.{task}.data")}


def _files_digest(cfg: LifecycleConfig, patterns: list[str], label: str) -> str:
    """The input files' digest; a file is re-read only when its stat stamp changed (a 100 GB
    corpus is not hashed again on every run)."""
    stamps = Stamps(cfg.cache.stamp_dir, trust=cfg.cache.verify == "stamp")
    files = [Path(f) for f in expand_files(patterns, label)]
    return files_digest(files, Path("/"), lambda path: stamps.digest(path.resolve()))


def _without(values: dict, drop: set) -> dict:
    return {k: v for k, v in values.items() if k not in drop}
