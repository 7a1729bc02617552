"""Pretraining checkpoints evaluated outside the training process, while it trains.

With `eval.checkpoints.enabled`, pretraining writes a snapshot of the weights every
`eval.checkpoints.every_n_steps` (default: at each checkpoint) into a folder beside the
cache entry, one `step-0000200/` per snapshot (the exported model format, then
`snapshot.json` with the step and the weights' digest, written last). An evaluator in a
process of its own (`python -m lm_tasks.checkpoint_eval`, `eval.checkpoints.threads`
torch threads, the lowest CPU priority, nothing imported but torch and the model code)
scores each snapshot as it appears: held-out loss, perplexity and bits per byte over the
whole validation split, kept beside the snapshot (`evaluation.json`, naming the digest it
scored, so nothing is scored twice). The stage's process logs each result into the
pretraining's MLflow run at the snapshot's step (`ckpt/loss`, `ckpt/perplexity`, `ckpt/bpb`).

The evaluator never fails the training: if it dies or is killed, the stage scores what it
left (`evaluate_pending`) once training has finished, and so does the next run of an
interrupted pretraining.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from lm_tasks.artifacts import write_json

log = logging.getLogger(__name__)

SNAPSHOT, RESULT, DONE = "snapshot.json", "evaluation.json", "training-done"
PREFIX = "ckpt/"


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


def evaluated(snapshot: Snapshot) -> dict | None:
    """The snapshot's evaluation, if one was made of these very weights."""
    try:
        result = json.loads((snapshot.path / RESULT).read_text())
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) and result.get("digest") == snapshot.digest else None


def evaluate_snapshot(snapshot: Snapshot, tokens_dir: Path, batch_size: int) -> dict:
    """Held-out loss, perplexity and bits per byte of the snapshot on the whole validation split."""
    from lm_tasks.evaluation import heldout_loss, lm_metrics
    from lm_tasks.models.io import load_pretrained

    model = load_pretrained(snapshot.path)
    return lm_metrics(heldout_loss(model, tokens_dir, batch_size), tokens_dir)


def evaluate_pending(folder: Path, tokens_dir: Path, batch_size: int) -> list[dict]:
    """Score every snapshot not scored yet; every result, by step."""
    for snapshot in snapshots(folder):
        if evaluated(snapshot) is None:
            metrics = evaluate_snapshot(snapshot, tokens_dir, batch_size)
            write_json(snapshot.path / RESULT, {"step": snapshot.step, "digest": snapshot.digest, "metrics": metrics})
            log.info("checkpoint evaluation: step %d  bpb %.4f", snapshot.step, metrics["bpb"])
    return results(folder)


def results(folder: Path) -> list[dict]:
    """The evaluations made so far, by step."""
    return [result for snapshot in snapshots(folder) if (result := evaluated(snapshot)) is not None]


def log_results(folder: Path, run_id: str, logged: set[int]) -> None:
    """Log the evaluations not logged yet into the MLflow run `run_id`, each at its step (the
    stage's process does this: the evaluator needs neither MLflow nor the store's address)."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    for result in results(folder):
        if result["step"] not in logged:
            now = int(time.time() * 1000)
            MlflowClient().log_batch(run_id, metrics=[Metric(PREFIX + k, float(v), now, result["step"])
                                                      for k, v in result["metrics"].items()])
            logged.add(result["step"])


def curve_markdown(results: list[dict]) -> str:
    """The evaluations as a table, one row per checkpoint."""
    lines = ["| step | loss | perplexity | bits per byte |", "|---|---|---|---|"]
    lines += [f"| {r['step']} | {r['metrics']['loss']:.4f} | {r['metrics']['perplexity']:.2f} | "
              f"{r['metrics']['bpb']:.4f} |" for r in results]
    return "\n".join(lines) + "\n"


def plot_curve(results: list[dict], path: Path) -> Path:
    """Held-out bits per byte against the training step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in results], [r["metrics"]["bpb"] for r in results], marker="o")
    ax.set_xlabel("step")
    ax.set_ylabel("held-out bits per byte")
    ax.set_title("Checkpoints, evaluated while training")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --- the evaluator process -------------------------------------------------------------


def watch(folder: Path, tokens_dir: Path, batch_size: int, poll_s: float = 1.0) -> None:
    """Score snapshots as they appear until training marks itself done and none is left."""
    while True:
        done = (folder / DONE).is_file()  # read first: a snapshot written before it is seen below
        evaluate_pending(folder, tokens_dir, batch_size)
        if done:
            return
        time.sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Evaluate pretraining snapshots as they appear.")
    parser.add_argument("--snapshots", type=Path, required=True)
    parser.add_argument("--tokens", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="[checkpoint evaluator] %(message)s")
    watch(args.snapshots, args.tokens, args.batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
