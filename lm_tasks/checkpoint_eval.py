"""Pretraining checkpoints evaluated outside the training process, while it trains.

With `eval.checkpoints.enabled`, pretraining writes a snapshot of the weights every
`eval.checkpoints.every_n_steps` (default: at each checkpoint) into a staging folder beside
the cache, one `step-0000200/` per snapshot (the exported model format, then
`snapshot.json` with the step and the weights' digest, written last). From there:

- the stage's process **publishes** each snapshot: a cache entry `snapshot/<digest>` (so
  also in a shared cache store, for an evaluator on another machine), then an announcement
  to whoever subscribed (`subscribe`: the flows turn it into a Prefect event,
  `lm-tasks.checkpoint.saved`, whose resource is the pretraining's MLflow run);
- an **evaluator** scores it: held-out loss, perplexity and bits per byte over the whole
  validation split, sample generations from `eval.prompts`, and optionally a quick probe
  (`eval.checkpoints.probe=sentiment`: lm_tasks.probes). With
  `eval.checkpoints.evaluator=local`, a process of its own (`python -m
  lm_tasks.checkpoint_eval`, `eval.checkpoints.threads` torch threads, the lowest CPU
  priority); with `deployment`, the `evaluate-checkpoint` deployment that the Prefect event
  triggers on a worker;
- each evaluation is a cache entry `ckpt-eval/<key>`, keyed by the weights' digest, the
  validation tokens' digest and the settings: nothing is scored twice, wherever it ran;
- the results go into the pretraining's MLflow run at the snapshot's step (`ckpt/loss`,
  `ckpt/perplexity`, `ckpt/bpb`, `ckpt/samples/step-*.json`), with `ckpt/curve.png` and
  `ckpt/evaluations.md` drawn from everything logged so far.

The evaluator never fails the training. The pretraining entry lists its snapshots
(`snapshots.json`), so what no evaluator scored (it died, was killed, or no worker ran) is
caught up by `catch_up`: at the end of the stage in local mode, and by the next run that
takes the pretraining from the cache.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from lm_tasks.artifacts import file_digest, write_json

log = logging.getLogger(__name__)

SNAPSHOT, RESULT, DONE, LISTING = "snapshot.json", "evaluation.json", "training-done", "snapshots.json"
SNAPSHOT_STAGE, EVAL_STAGE = "snapshot", "ckpt-eval"
EVENT = "lm-tasks.checkpoint.saved"
PREFIX = "ckpt/"
# The library code an evaluation runs: a change to it scores every checkpoint again.
CODE = ["checkpoint_eval.py", "evaluation.py", "probes.py", "models", "tokenizer", "tasks/embedded.py"]
DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass
class Snapshot:
    step: int
    path: Path
    digest: str


def snapshots(folder: Path) -> list[Snapshot]:
    """The complete snapshots in `folder` (their snapshot.json written), by step."""
    found = []
    for path in sorted(folder.glob("step-*")) if folder.is_dir() else []:
        try:
            meta = json.loads((path / SNAPSHOT).read_text())
            found.append(Snapshot(int(meta["step"]), path, str(meta["digest"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being written, or not ours
    return sorted(found, key=lambda s: s.step)


@dataclass
class Settings:
    """What an evaluation computes, besides the weights and the tokens it reads. The generation
    fields have EvalConfig's names: lm_tasks.evaluation.sample_generations reads either."""

    batch_size: int = 32  # not in the key: the results do not depend on it
    prompts: list = field(default_factory=list)
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    seed: int = 0
    probe: str = "none"  # lm_tasks.probes: none | sentiment

    @classmethod
    def of(cls, cfg) -> "Settings":
        """The settings of a LifecycleConfig (eval.* and the seed)."""
        e = cfg.eval
        return cls(e.batch_size, list(e.prompts), e.max_new_tokens, e.temperature, e.top_k, e.top_p, cfg.seed,
                   e.checkpoints.probe)

    def keyed(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "batch_size"}


# --- evaluations, cached by the weights' digest ----------------------------------------


def evaluation_key(digest: str, tokens_digest: str, settings: Settings) -> str:
    from lm_tasks.cache import stage_key

    return stage_key(EVAL_STAGE, settings.keyed(), CODE, {"weights": digest, "tokens": tokens_digest})


def cached_evaluation(cache, digest: str, tokens_digest: str, settings: Settings) -> dict | None:
    """The evaluation of these weights on these tokens, if any evaluator made it (here, or on
    another machine sharing the cache store)."""
    entry = cache.lookup(EVAL_STAGE, evaluation_key(digest, tokens_digest, settings))
    if entry is None:
        return None
    try:  # a shared store's entry is not trusted: only numbers and texts come out of it
        result = json.loads((entry.path / RESULT).read_text())
        metrics = {str(name): float(value) for name, value in result["metrics"].items()}
        samples = [{"prompt": str(s["prompt"]), "completion": str(s["completion"])} for s in result["samples"]]
        step, metrics["bpb"] = int(result["step"]), metrics["bpb"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        log.warning("checkpoint evaluation %s is unreadable (%s); scoring again", entry.path, err)
        return None
    return {"step": step, "digest": digest, "metrics": metrics, "samples": samples}


def evaluate_checkpoint(cache, weights_dir: Path, digest: str, step: int, tokens_dir: Path, tokens_digest: str,
                        settings: Settings) -> dict:
    """The evaluation of the snapshot in `weights_dir`: from the cache, or computed and cached.
    The weights must be the ones `digest` names (a snapshot folder is not trusted)."""
    key = evaluation_key(digest, tokens_digest, settings)
    if (found := cached_evaluation(cache, digest, tokens_digest, settings)) is not None:
        return found
    if file_digest(Path(weights_dir) / "model.safetensors") != digest:
        raise ValueError(f"{weights_dir}: its weights are not the ones of digest {digest[:12]} (changed or "
                         "replaced): not evaluated")
    with cache.claim(EVAL_STAGE, key) as work:
        if (found := cached_evaluation(cache, digest, tokens_digest, settings)) is not None:
            return found  # another evaluator finished it while this one waited for the lock
        result = {"step": step, "digest": digest, **score(Path(weights_dir), Path(tokens_dir), settings)}
        write_json(work / RESULT, result)
        cache.commit(EVAL_STAGE, key, work, {"stage": EVAL_STAGE, "digest": digest})
    log.info("checkpoint evaluation: step %d  bpb %.4f", step, result["metrics"]["bpb"])
    return result


def score(weights_dir: Path, tokens_dir: Path, settings: Settings) -> dict:
    """Held-out loss, perplexity and bits per byte on the whole validation split; samples."""
    import torch

    from lm_tasks.evaluation import heldout_loss, lm_metrics, sample_generations
    from lm_tasks.models.io import load_pretrained

    model = load_pretrained(weights_dir)
    with torch.no_grad():
        metrics = lm_metrics(heldout_loss(model, tokens_dir, settings.batch_size), tokens_dir)
        samples = sample_generations(model, weights_dir / "tokenizer.json", settings, settings.seed)
    if settings.probe == "sentiment":
        from lm_tasks.probes import sentiment_probe

        accuracy = sentiment_probe(model, weights_dir / "tokenizer.json", settings.seed)
        if accuracy is not None:
            metrics["probe_sentiment_accuracy"] = accuracy
    return {"metrics": metrics, "samples": samples}


# --- publishing: the snapshot in the cache, then an announcement ----------------------

_subscribers: list[Callable[[dict], None]] = []


def subscribe(listener: Callable[[dict], None]) -> None:
    """Call `listener(announcement)` for each published snapshot (the flows emit a Prefect
    event; this library imports no Prefect). An announcement holds `run_id`, `step`, `digest`,
    `path` (the cache entry here), `tokens_key`, `pretrain_key` and `evaluator`."""
    if listener not in _subscribers:
        _subscribers.append(listener)


def publish(cache, snapshot: Snapshot, announcement: dict) -> Path:
    """The snapshot as the cache entry `snapshot/<digest>` (uploaded to a shared store), then
    announced; the entry's folder."""
    entry = cache.lookup(SNAPSHOT_STAGE, snapshot.digest)
    if entry is None:
        with cache.claim(SNAPSHOT_STAGE, snapshot.digest) as work:
            for source in snapshot.path.iterdir():
                if source.is_file() and not source.is_symlink():
                    _link_or_copy(source, work / source.name)
            entry = cache.commit(SNAPSHOT_STAGE, snapshot.digest, work,
                                 {"stage": SNAPSHOT_STAGE, "digest": snapshot.digest})
    for listener in _subscribers:
        try:
            listener({**announcement, "step": snapshot.step, "digest": snapshot.digest, "path": str(entry.path)})
        except Exception as err:  # an event that did not go out must not stop the training
            log.warning("checkpoint %d: announcing it failed (%s: %s)", snapshot.step, type(err).__name__, err)
    return entry.path


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)  # the same bytes, no copy: the snapshot is never written again
    except OSError:
        shutil.copyfile(source, target)


# --- results in the pretraining's MLflow run ----------------------------------------------


def log_result(run_id: str, result: dict) -> None:
    """One evaluation into the MLflow run `run_id`, at its step (metrics, and its samples as
    `ckpt/samples/step-*.json`)."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client, now, step = MlflowClient(), int(time.time() * 1000), int(result["step"])
    client.log_batch(run_id, metrics=[Metric(PREFIX + k, float(v), now, step) for k, v in result["metrics"].items()])
    client.log_dict(run_id, {"step": step, "digest": result["digest"], "samples": result.get("samples", [])},
                    f"{PREFIX}samples/step-{step:07d}.json")


def logged_steps(run_id: str) -> set[int]:
    from mlflow.tracking import MlflowClient

    return {m.step for m in MlflowClient().get_metric_history(run_id, PREFIX + "bpb")}


def log_curve(run_id: str) -> int:
    """`ckpt/evaluations.md` and `ckpt/curve.png` from every checkpoint evaluation logged in
    the run so far (whichever evaluator made them); how many there are."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    history = {name: {m.step: m.value for m in client.get_metric_history(run_id, PREFIX + name)}
               for name in ("loss", "perplexity", "bpb")}
    steps = sorted(history["bpb"])
    if not steps:
        return 0
    lines = ["| step | loss | perplexity | bits per byte |", "|---|---|---|---|"]
    lines += [f"| {s} | {history['loss'].get(s, float('nan')):.4f} | {history['perplexity'].get(s, float('nan')):.2f}"
              f" | {history['bpb'][s]:.4f} |" for s in steps]
    best = min(steps, key=history["bpb"].get)
    lines += ["", f"Best held-out bits per byte: {history['bpb'][best]:.4f} at step {best}. Sample generations "
                  f"of each checkpoint: `{PREFIX}samples/`."]
    client.log_text(run_id, "\n".join(lines) + "\n", f"{PREFIX}evaluations.md")
    with tempfile.TemporaryDirectory() as scratch:
        curve = plot_curve(steps, [history["bpb"][s] for s in steps], Path(scratch) / "curve.png")
        client.log_artifact(run_id, str(curve), PREFIX.rstrip("/"))
    return len(steps)


def plot_curve(steps: list[int], bpb: list[float], path: Path) -> Path:
    """Held-out bits per byte against the training step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, bpb, marker="o")
    ax.set_xlabel("step")
    ax.set_ylabel("held-out bits per byte")
    ax.set_title("Checkpoints, evaluated while training")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --- choosing a checkpoint ---------------------------------------------------------------

HIGHER_IS_BETTER = ("accuracy", "f1", "exact", "bleu", "rouge", "chrf")


def direction(metric: str) -> str:
    """`max` for accuracies and overlap scores, `min` for losses, perplexities, bits per byte."""
    return "max" if any(word in metric.lower() for word in HIGHER_IS_BETTER) else "min"


def best_checkpoint(run_id: str, listed: list[dict], metric: str, mode: str) -> dict:
    """The listed snapshot whose evaluation, logged in `run_id`, is best on `metric` (the
    earliest of equals): {step, digest, value}."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    history = {m.step: m.value for m in client.get_metric_history(run_id, metric)}
    scored = [{**item, "value": history[item["step"]]} for item in listed if item["step"] in history]
    if not scored:
        known = sorted(k for k in client.get_run(run_id).data.metrics if k.startswith(PREFIX))
        raise LookupError(f"no checkpoint of pretraining run {run_id} has an evaluation of {metric!r} "
                          f"({len(listed)} checkpoint(s) listed; evaluated metrics: {', '.join(known) or 'none'}). "
                          "Enable eval.checkpoints (and eval.checkpoints.probe for a probe's metric) and run the "
                          "pretraining again, or run the lifecycle again to catch up evaluations")
    sign = 1 if mode == "min" else -1
    return min(scored, key=lambda item: (sign * item["value"], item["step"]))


# --- catching up ------------------------------------------------------------------------


def listing(pretrain_dir: Path) -> list[dict]:
    """The snapshots a pretraining entry lists ({step, digest}), checked (entries are not trusted)."""
    try:
        raw = json.loads((Path(pretrain_dir) / LISTING).read_text())
    except FileNotFoundError:
        return []
    except ValueError as err:
        raise ValueError(f"{pretrain_dir / LISTING} is not JSON: {err}") from err
    checked = []
    for item in raw if isinstance(raw, list) else []:
        if isinstance(item, dict) and isinstance(item.get("step"), int) and DIGEST.fullmatch(str(item.get("digest"))):
            checked.append({"step": item["step"], "digest": item["digest"]})
    return checked


def catch_up(cache, listed: list[dict], tokens_dir: Path, tokens_digest: str, settings: Settings, run_id: str) -> int:
    """Log into the run the evaluations of the listed snapshots it lacks, scoring those no
    evaluator scored; redraw the curve; how many were scored here. A snapshot gone from the
    cache is skipped with a warning."""
    done, computed = logged_steps(run_id), 0
    for item in listed:
        step, digest = item["step"], item["digest"]
        if step in done:
            continue  # logged by whichever evaluator, with whatever settings it had
        result = cached_evaluation(cache, digest, tokens_digest, settings)
        if result is None:
            entry = cache.lookup(SNAPSHOT_STAGE, digest)
            if entry is None:
                log.warning("checkpoint %d (%s) is gone from the cache: not evaluated", step, digest[:12])
                continue
            result, computed = evaluate_checkpoint(cache, entry.path, digest, step, tokens_dir, tokens_digest,
                                                   settings), computed + 1
        log_result(run_id, {**result, "step": step})
        done.add(step)
    if listed:
        log_curve(run_id)
    return computed


# --- the evaluator process ----------------------------------------------------------------


def watch(cache, folder: Path, tokens_dir: Path, tokens_digest: str, settings: Settings, poll_s: float = 1.0) -> None:
    """Score snapshots as they appear until training marks itself done and none is left."""
    while True:
        done = (folder / DONE).is_file()  # read first: a snapshot written before it is seen below
        for snapshot in snapshots(folder):
            evaluate_checkpoint(cache, snapshot.path, snapshot.digest, snapshot.step, tokens_dir, tokens_digest,
                                settings)
        if done:
            return
        time.sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Evaluate pretraining snapshots as they appear.")
    parser.add_argument("--snapshots", type=Path, required=True)
    parser.add_argument("--tokens", type=Path, required=True)
    parser.add_argument("--tokens-digest", required=True)
    parser.add_argument("--settings", required=True, help="Settings, as JSON")
    parser.add_argument("--cache", required=True, help="the cache.* config, as JSON")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    from lm_tasks.cache import StageCache
    from lm_tasks.config import CacheConfig

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="[checkpoint evaluator] %(message)s")
    cache = StageCache(CacheConfig(**json.loads(args.cache)))
    watch(cache, args.snapshots, args.tokens, args.tokens_digest, Settings(**json.loads(args.settings)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
