"""Eval-gated promotion in the MLflow model registry.

The lifecycle registers the model its gate metric belongs to (the pretrained LM for
`eval/lm/...`, the task model for `eval/<task>/...`) as a version of `<name>-<part>`
(`lm-lifecycle-lm`, `lm-lifecycle-classification`; `promotion.model_name` when set), then
moves `promotion.alias` (champion) to that version only if the metric beats the current
champion's by more than `promotion.margin`. The first version always becomes champion.
A model already registered (same weights digest) is not registered again, so re-running
a cached lifecycle changes nothing.

It fails closed. Decisions:

    promoted                the alias moved: no champion yet, or the candidate beat it
    forced                  the alias moved without comparing (promotion.force=true)
    kept                    the candidate already is the champion
    rejected                the candidate did not beat the champion, or its metric is NaN/inf
    no-comparable-champion  the champion has no finite value of the metric (registered by
                            hand, by another gate): the alias stays; force=true moves it
    error                   the registry failed: the alias stays, the lifecycle fails

The champion is read again just before the alias moves; if another lifecycle moved it
meanwhile, the candidate is compared with the new champion.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking import MlflowClient

from lm_tasks import lineage, model_card
from lm_tasks.config import ConfigError, PromotionConfig, ServingConfig
from lm_tasks.redaction import redact
from lm_tasks.stages import StageResult

log = logging.getLogger(__name__)

PROMOTED, FORCED, KEPT, REJECTED, NOT_COMPARABLE, ERROR = (
    "promoted", "forced", "kept", "rejected", "no-comparable-champion", "error")
MOVES = (PROMOTED, FORCED)
DESCRIPTION_LIMIT = 5000  # characters of a model version's description in MLflow's SQL stores
SERVED_PARTS = ("lm", "classification")  # the models the stages log as pyfunc models (lm_tasks.serving)
COMPARISONS = 3  # champion changes tolerated while comparing before giving up
REASON_CHARS = 1000  # MLflow tag values are bounded


class PromotionError(RuntimeError):
    """The registry failed during promotion; the alias was not moved."""


def gate_part(cfg: PromotionConfig, tasks: list[str] | None = None) -> str:
    """Which evaluated part the gate metric belongs to: `lm` or one of the fine-tuned `tasks`."""
    parts = cfg.metric.split("/")
    if len(parts) != 3 or parts[0] != "eval":
        raise ConfigError(f"promotion.metric must look like eval/<lm or task>/<metric>, got {cfg.metric!r}")
    if tasks is not None and parts[1] not in ("lm", *tasks):
        raise ConfigError(f"promotion.metric={cfg.metric!r} needs finetune={parts[1]} (fine-tuned here: "
                          f"{', '.join(tasks) or 'none'}); or gate on eval/lm/bpb")
    return parts[1]


def registered_model_name(cfg: PromotionConfig, project: str) -> str:
    """`promotion.model_name`, else `<project>-<gated part>`: gating on a task never touches
    the language model's registered model."""
    return cfg.model_name or f"{project}-{gate_part(cfg)}"


def promote(cfg: PromotionConfig, model_name: str, metrics: dict, model: StageResult,
            serving: ServingConfig | None = None) -> dict:
    """Register `model` (the gated stage's result) and move the alias if it wins; return the
    decision. Registry errors are returned as decision `error`, never raised. `serving`: the
    request limits of a pyfunc model logged again here (see _model_source)."""
    if cfg.metric not in metrics:
        raise ConfigError(f"promotion.metric={cfg.metric!r} was not measured; measured: {', '.join(sorted(metrics))}")
    candidate = float(metrics[cfg.metric])
    result = {"model": model_name, "version": None, "alias": cfg.alias, "metric": cfg.metric,
              "candidate": candidate, "champion": None, "champion_version": None, "margin": cfg.margin}
    if not math.isfinite(candidate):  # a broken evaluation is never registered
        return _decided(result, REJECTED, f"{cfg.metric} is {candidate}; only a finite value can win")
    try:
        client = MlflowClient()
        result["version"] = _register(client, model_name, model, gate_part(cfg), {cfg.metric: str(candidate)},
                                      serving, metrics)
        for _ in range(COMPARISONS):
            champion = _champion(client, model_name, cfg.alias)
            decision, reason = _compare(cfg, result, champion)
            if decision not in MOVES:
                return _decided(result, decision, reason)
            if _version_of(_champion(client, model_name, cfg.alias)) == _version_of(champion):  # nobody moved it
                client.set_registered_model_alias(model_name, cfg.alias, result["version"])
                return _decided(result, decision, reason)
            log.warning("promotion: %s@%s moved while comparing; comparing again", model_name, cfg.alias)
        return _decided(result, ERROR, f"{model_name}@{cfg.alias} moved {COMPARISONS} times while comparing; "
                                       "not moved, run the lifecycle again")
    except (MlflowException, OSError) as err:  # OSError: network and storage errors outside MLflow's own
        return _decided(result, ERROR, f"registry error, {cfg.alias!r} not moved: {type(err).__name__}: {err}")


def _register(client: MlflowClient, name: str, model: StageResult, part: str, tags: dict,
              serving: ServingConfig | None, metrics: dict) -> str:
    """The version of `name` holding the model's weights: an existing one (same digest) or a
    new one, described by the model's card with the held-out evaluation that got it registered."""
    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if err.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
    for version in client.search_model_versions(f"name = '{name}'"):
        if version.tags.get("model_digest") == model.digest:
            return str(version.version)
    run_id, source, model_id = _model_source(model, part, serving)
    version = client.create_model_version(name, source, run_id=run_id, model_id=model_id,
                                          tags={"model_digest": model.digest, "part": part, **tags},
                                          description=version_card(model, part, metrics))
    return str(version.version)  # the registry returns ints or strings depending on the call


def version_card(model: StageResult, part: str, metrics: dict) -> str | None:
    """A registered version's description: the model card of its exported folder (without the
    Hub's YAML metadata), its held-out evaluation added; cut to what the registry stores."""
    card = Path(model.output_dir) / "model" / model_card.CARD
    if not card.is_file():  # a model exported before models carried cards
        return None
    text = card.read_text().split("\n---\n", 1)[-1].lstrip()  # the markdown after the metadata
    run = mlflow.active_run()  # the lifecycle run whose evaluation this is
    text = model_card.with_evaluation(text, part, metrics, run.info.run_id if run else "unknown")
    if len(text) > DESCRIPTION_LIMIT:
        note = "\n\n(cut here: the whole card is README.md in the version's model artifact)\n"
        text = text[:DESCRIPTION_LIMIT - len(note)] + note
    return text


def _model_source(model: StageResult, part: str, serving: ServingConfig | None) -> tuple[str, str, str | None]:
    """(run id, model URI, logged model id) to register: the pyfunc model the producing stage
    logged (loadable with mlflow.pyfunc.load_model), else its plain `model` folder. When that
    run is in another tracking store (the stage came from a shared cache), the model is
    logged again, from the cache entry, into the active (lifecycle) run of this store."""
    run = lineage.run_here(model.run_id)
    if run is not None:
        return (model.run_id, run.data.tags.get("pyfunc.model_uri", f"{run.info.artifact_uri}/model"),
                run.data.tags.get("pyfunc.model_id"))
    from lm_tasks.serving import log_model

    model_dir = Path(model.output_dir) / "model"
    here = mlflow.active_run().info.run_id
    log.info("promotion: run %s of the cached %s stage is in another tracking store; logging its model "
             "from %s into run %s", model.run_id, model.stage, model_dir, here)
    if part in SERVED_PARTS and serving is not None:
        info = log_model(model_dir, serving, name="pyfunc")
        return here, info.model_uri, info.model_id
    mlflow.log_artifacts(str(model_dir), "model")
    return here, mlflow.get_artifact_uri("model"), None


def _champion(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version holding the alias, None when no version does. Read from the registered
    model's aliases: a missing alias is not an error there, while get_model_version_by_alias
    reports it as INVALID_PARAMETER_VALUE, like any bad request."""
    version = client.get_registered_model(name).aliases.get(alias)
    return None if version is None else client.get_model_version(name, str(version))


def _version_of(version: ModelVersion | None) -> str | None:
    return None if version is None else str(version.version)


def _compare(cfg: PromotionConfig, result: dict, champion: ModelVersion | None) -> tuple[str, str]:
    """The decision for the candidate in `result` against `champion`, and why; records the
    champion's version and value in `result`."""
    result["champion_version"] = _version_of(champion)
    result["champion"] = _finite(champion.tags.get(cfg.metric)) if champion else None
    if champion is None:
        return PROMOTED, "no champion yet"
    if result["champion_version"] == result["version"]:
        return KEPT, "already the champion"
    if cfg.force:
        return FORCED, "promotion.force=true"
    if result["champion"] is None:
        return NOT_COMPARABLE, (f"champion v{result['champion_version']} has no finite {cfg.metric} tag to compare "
                                f"with; promotion.force=true replaces it")
    gain = result["champion"] - result["candidate"] if cfg.mode == "min" else result["candidate"] - result["champion"]
    if gain > cfg.margin:
        return PROMOTED, f"better by {gain:.4g} > margin {cfg.margin}"
    return REJECTED, f"better by {gain:.4g}, not more than margin {cfg.margin}"


def _finite(tag: str | None) -> float | None:
    """A version's metric tag as a number; None when absent, unreadable, NaN or infinite."""
    try:
        value = float(tag)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _decided(result: dict, decision: str, reason: str) -> dict:
    result.update(decision=decision, reason=redact(reason)[:REASON_CHARS])  # registry errors may quote the URI
    champion = "none" if result["champion"] is None else f"{result['champion']:.4g}"
    level = logging.ERROR if decision == ERROR else logging.INFO
    log.log(level, "promotion: %s %s v%s (%s %.4g vs champion %s): %s", decision, result["model"],
            result["version"], result["metric"], result["candidate"], champion, result["reason"])
    return result


def record(result: dict) -> None:
    """The decision, why, and both numbers, on the active (lifecycle) run."""
    mlflow.set_tags({"promotion.decision": result["decision"], "promotion.reason": result["reason"],
                     "promotion.model": result["model"],
                     **({"promotion.version": result["version"]} if result["version"] else {})})
    mlflow.log_metric("promotion/candidate", result["candidate"])
    if result["champion"] is not None:
        mlflow.log_metric("promotion/champion", result["champion"])


def raise_on_error(result: dict) -> None:
    """Fail the lifecycle when the registry failed: a scheduled retraining that could not
    promote must not look like a success (run it again: every stage is cached)."""
    if result["decision"] == ERROR:
        raise PromotionError(f"promotion of {result['model']} failed: {result['reason']}")


def markdown(result: dict) -> str:
    champion = "none" if result["champion"] is None else f"{result['champion']:.4g}"
    if result["champion_version"] is not None:
        champion += f" (v{result['champion_version']})"
    version = "not registered" if result["version"] is None else f"v{result['version']}"
    return (f"`{result['model']}` {version}: **{result['decision']}** as `{result['alias']}` "
            f"({result['metric']} {result['candidate']:.4g} vs champion {champion}, margin {result['margin']}): "
            f"{result['reason']}\n")
