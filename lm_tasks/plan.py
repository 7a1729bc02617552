"""What a lifecycle run would do, before it runs: each stage's cache key, state and inputs.

    python -m flows.plan [overrides]

A stage is `cached` (a verified entry here), `in store` (in the shared cache store, fetched
when the run starts), `resumable` (an interrupted attempt left checkpoints), `running`
(another process computes it now), `corrupt` (refused: it will be recomputed), `missing`,
`refresh` (cache.refresh asks to recompute it) or `unknown`: a stage's key includes the
digest of its inputs' content, so the key of a stage after one that must run is known only
once that one has run (an unchanged output is then still a cache hit).

Nothing is run, fetched or removed, and neither Prefect, MLflow nor torch is imported: a
plan takes about a second. The config is compared with the one the last lifecycle run of
this name wrote (`<paths.output_dir>/config.yaml`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from lm_tasks.artifacts import file_digest
from lm_tasks.cache import CACHED, IN_STORE, RESUMABLE, StageCache
from lm_tasks.config import LifecycleConfig
from lm_tasks.stage_keys import (data_key, evaluate_key, finetune_key, is_hf_checkpoint, lm_eval_key, pretrain_key,
                                 task_eval_key, tokenizer_key)

REFRESH, UNKNOWN, OFF = "refresh", "unknown", "cache off"
REUSED = (CACHED, IN_STORE)  # the states in which a run reuses the stage's output


@dataclass
class PlannedStage:
    stage: str
    state: str
    key: str | None  # None while an input has not been computed
    inputs: list[str]
    digest: str | None = None  # the output's content digest, when it is reused
    note: str = ""


@dataclass
class Plan:
    name: str
    stages: list[PlannedStage]
    changes: dict[str, tuple] = field(default_factory=dict)  # key -> (last run's value, this one's)
    last_config: str | None = None  # the config file compared with, when there is one
    seconds: float = 0.0

    @property
    def to_run(self) -> list[str]:
        return [s.stage for s in self.stages if s.state not in REUSED]

    def as_dict(self) -> dict:
        return {**asdict(self), "to_run": self.to_run}


def make_plan(cfg: LifecycleConfig) -> Plan:
    start = time.perf_counter()
    cache = StageCache(cfg.cache)

    def planned(stage: str, inputs: list[str], key_of, *upstream: PlannedStage) -> PlannedStage:
        waiting = [s.stage for s in upstream if s.digest is None]
        if waiting:
            return PlannedStage(stage, UNKNOWN, None, inputs, note=f"key known after {', '.join(waiting)} ran")
        key = key_of(*[s.digest for s in upstream])
        if not cfg.cache.enabled:
            return PlannedStage(stage, OFF, key, inputs)
        state, manifest = cache.state(stage, key)
        if state in (*REUSED, RESUMABLE) and cache.wants_refresh(stage):  # a refresh also starts over
            return PlannedStage(stage, REFRESH, key, inputs, note="cache.refresh asks to recompute it")
        digest = manifest.get("digest") if manifest else None
        note = {RESUMABLE: "resumes from checkpoints/last.ckpt"}.get(state, "")
        return PlannedStage(stage, state, key, inputs, digest if state in REUSED else None, note)

    data = planned("data", _data_inputs(cfg), lambda: data_key(cfg))
    tokens = planned("tokenizer", ["data"], lambda d: tokenizer_key(cfg, d), data)
    pretrained = planned("pretrain", ["tokenizer"], lambda t: pretrain_key(cfg, t), tokens)
    model = _init_from(cfg) or pretrained
    tuned = {task: planned(f"finetune:{task}", [model.stage, *_task_inputs(cfg, task)],
                           lambda m, task=task: finetune_key(cfg, task, m), model)
             for task in cfg.finetune}
    parts = [tokens, pretrained, *tuned.values()]

    def evaluation_key(tokens_digest, model_digest, *tuned_digests) -> str:
        keys = {"lm": lm_eval_key(cfg, tokens_digest, model_digest)}
        keys.update({task: task_eval_key(cfg, task, d) for task, d in zip(tuned, tuned_digests)})
        return evaluate_key(keys)

    evaluated = planned("evaluate", [s.stage for s in parts], evaluation_key, *parts)
    stages = [data, tokens, pretrained, *tuned.values(), evaluated]
    last = Path(cfg.paths.output_dir) / "config.yaml"
    try:
        changes = config_changes(last.read_text(), cfg.resolved_yaml) if last.is_file() else {}
    except (OSError, yaml.YAMLError):  # unreadable: nothing to compare with
        last, changes = Path("/nonexistent"), {}
    return Plan(cfg.name, stages, changes, str(last) if last.is_file() else None,
                round(time.perf_counter() - start, 3))


def _init_from(cfg: LifecycleConfig) -> PlannedStage | None:
    """`init_from` as the fine-tuning tasks' input: a model folder's digest is read here; a Hub
    checkpoint or an MLflow run is resolved only when the run starts."""
    if cfg.init_from is None:
        return None
    if cfg.init_from.startswith("best:"):  # a checkpoint of the pretraining above, chosen by its evaluations
        return PlannedStage(f"init_from={cfg.init_from}", UNKNOWN, None, ["pretrain"], None,
                            "the pretraining's checkpoint best on that metric, chosen when the run starts")
    weights = Path(cfg.init_from) / "model.safetensors"
    # our own model folder; a Hugging Face checkpoint is converted first, its digest unknown here
    digest = file_digest(weights) if weights.is_file() and not is_hf_checkpoint(cfg.init_from) else None
    return PlannedStage(f"init_from={cfg.init_from}", CACHED if digest else UNKNOWN, None, [], digest)


def _data_inputs(cfg: LifecycleConfig) -> list[str]:
    data = cfg.data
    if data.source == "local":
        return [*data.files, *data.validation_files]
    if data.source == "hub":
        return [f"hub:{data.hub_name}" + (f"@{data.hub_revision}" if data.hub_revision else "")]
    return ["embedded corpus"]


def _task_inputs(cfg: LifecycleConfig, task: str) -> list[str]:
    data = cfg.finetune[task].data
    if data.source == "local":
        return [*data.train_files, *data.validation_files, *data.test_files]
    return [f"hub:{data.hub_name}" if data.source == "hub" else f"embedded:{cfg.finetune[task].task}"]


class _Absent:
    """A key one of two configs lacks (a null value is None)."""

    def __repr__(self) -> str:
        return "(absent)"


ABSENT = _Absent()


def config_changes(before_yaml: str, after_yaml: str) -> dict[str, tuple]:
    """The dotted keys whose value differs between two resolved configs: key -> (before, after).
    A group present on one side only is one change (`finetune.qa: (absent) -> {...}`)."""
    changes: dict[str, tuple] = {}

    def compare(before, after, key: str) -> None:
        if isinstance(before, dict) and isinstance(after, dict) and before and after:
            for name in sorted(before.keys() | after.keys(), key=str):
                compare(before.get(name, ABSENT), after.get(name, ABSENT), f"{key}.{name}" if key else str(name))
        elif before != after:
            changes[key] = (before, after)

    compare(yaml.safe_load(before_yaml) or {}, yaml.safe_load(after_yaml) or {}, "")
    return changes


def render(plan: Plan) -> str:
    """The plan as a table, the config changes and what a run would do."""
    rows = [("stage", "state", "key", "inputs")]
    for s in plan.stages:
        state = f"{s.state} ({s.note})" if s.note else s.state
        rows.append((s.stage, state, s.key[:12] if s.key else "-", ", ".join(s.inputs) or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"Plan for {plan.name!r}", ""]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths)) + "  " + row[3] for row in rows]
    lines.append("")
    if plan.last_config is None:
        lines.append("No earlier run of this name to compare the config with.")
    elif not plan.changes:
        lines.append(f"Config unchanged since the last run ({plan.last_config}).")
    else:
        lines.append(f"Config changes since the last run ({plan.last_config}):")
        lines += [f"  {key}: {_shown(old)} -> {_shown(new)}" for key, (old, new) in plan.changes.items()]
    to_run = plan.to_run
    lines.append("Would run: " + (", ".join(to_run) if to_run else "nothing, every stage is cached") + ".")
    return "\n".join(lines)


def _shown(value) -> str:
    if isinstance(value, dict) and len(str(value)) > 60:
        return "{" + f"{len(value)} keys: " + ", ".join(map(str, list(value)[:4])) + (", ..." if len(value) > 4 else "") + "}"
    return repr(value) if isinstance(value, (str, _Absent)) else str(value)
