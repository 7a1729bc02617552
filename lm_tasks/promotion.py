"""Eval-gated promotion in the MLflow model registry.

The lifecycle registers the model its gate metric belongs to (the pretrained LM for
`eval/lm/...`, the task model for `eval/<task>/...`) as a version of
`promotion.model_name`, then moves `promotion.alias` (champion) to that version only
if the metric beats the current champion's by `promotion.margin`. The first version
always becomes champion. A model already registered (same weights digest) is not
registered again, so re-running a cached lifecycle changes nothing.
"""

from __future__ import annotations

import logging

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from lm_tasks.config import ConfigError, PromotionConfig

log = logging.getLogger(__name__)


def gate_part(cfg: PromotionConfig, tasks: list[str] | None = None) -> str:
    """Which evaluated part the gate metric belongs to: `lm` or one of the fine-tuned `tasks`."""
    parts = cfg.metric.split("/")
    if len(parts) != 3 or parts[0] != "eval":
        raise ConfigError(f"promotion.metric must look like eval/<lm or task>/<metric>, got {cfg.metric!r}")
    if tasks is not None and parts[1] not in ("lm", *tasks):
        raise ConfigError(f"promotion.metric={cfg.metric!r} needs finetune={parts[1]} (fine-tuned here: "
                          f"{', '.join(tasks) or 'none'}); or gate on eval/lm/bpb")
    return parts[1]


def promote(cfg: PromotionConfig, metrics: dict, model_run_id: str, model_digest: str) -> dict:
    """Register the candidate model and move the alias if it wins; return the decision."""
    if cfg.metric not in metrics:
        raise ConfigError(f"promotion.metric={cfg.metric!r} was not measured; measured: {', '.join(sorted(metrics))}")
    candidate = float(metrics[cfg.metric])
    client = MlflowClient()
    try:
        client.create_registered_model(cfg.model_name)
    except MlflowException:  # exists already
        pass
    version = _version_with_digest(client, cfg.model_name, model_digest)
    if version is None:
        # The pyfunc model the stage logged (loadable with mlflow.pyfunc.load_model), else the
        # plain exported folder.
        run = client.get_run(model_run_id)
        source = run.data.tags.get("pyfunc.model_uri", f"{run.info.artifact_uri}/model")
        version = client.create_model_version(cfg.model_name, source, run_id=model_run_id,
                                              model_id=run.data.tags.get("pyfunc.model_id"),
                                              tags={"model_digest": model_digest, cfg.metric: str(candidate)})
    try:
        champion = client.get_model_version_by_alias(cfg.model_name, cfg.alias)
    except MlflowException:
        champion = None

    number = str(version.version)  # the registry returns ints or strings depending on the call
    champion_number = str(champion.version) if champion else None
    champion_value = float(champion.tags[cfg.metric]) if champion and cfg.metric in champion.tags else None
    if champion_number == number:
        decision = "kept"  # the candidate already is the champion
    elif champion_value is None:
        decision = "promoted"
    else:
        gain = champion_value - candidate if cfg.mode == "min" else candidate - champion_value
        decision = "promoted" if gain > cfg.margin else "rejected"
    if decision == "promoted":
        client.set_registered_model_alias(cfg.model_name, cfg.alias, number)
    result = {"decision": decision, "model": cfg.model_name, "version": number, "alias": cfg.alias,
              "metric": cfg.metric, "candidate": candidate, "champion": champion_value,
              "champion_version": champion_number, "margin": cfg.margin}
    log.info("promotion: %s %s v%s (%s %.4g vs champion %s)", decision, cfg.model_name, number,
             cfg.metric, candidate, "none" if champion_value is None else f"{champion_value:.4g}")
    return result


def record(result: dict) -> None:
    """The decision and both numbers, on the active (lifecycle) run."""
    mlflow.set_tags({"promotion.decision": result["decision"], "promotion.version": result["version"],
                     "promotion.model": result["model"]})
    mlflow.log_metric("promotion/candidate", result["candidate"])
    if result["champion"] is not None:
        mlflow.log_metric("promotion/champion", result["champion"])


def _version_with_digest(client: MlflowClient, name: str, digest: str):
    for version in client.search_model_versions(f"name = '{name}'"):
        if version.tags.get("model_digest") == digest:
            return version
    return None


def markdown(result: dict) -> str:
    champion = "none" if result["champion"] is None else f"{result['champion']:.4g} (v{result['champion_version']})"
    return (f"`{result['model']}` v{result['version']}: **{result['decision']}** as `{result['alias']}` "
            f"({result['metric']} {result['candidate']:.4g} vs champion {champion}, margin {result['margin']})\n")
