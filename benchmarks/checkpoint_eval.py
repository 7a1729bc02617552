"""Training speed with and without checkpoints evaluated beside it (eval.checkpoints), side by side.

    .venv/bin/python benchmarks/checkpoint_eval.py [--repeats 2] [--out ...] [overrides]

Pretrains the default model on the embedded corpus (trainer.max_steps=200, a checkpoint every
50 steps) with the checkpoint evaluator off and on, alternately, `--repeats` times each, and
compares their training speed: the time-weighted mean of `train/tokens_per_sec` over the
logged steps (tokens over time, read back from MLflow: it counts the steps an evaluation
slowed), its median, and the stage's wall time (training, the wait for the last evaluation,
the artifacts). The evaluator runs in its own process, with `eval.checkpoints.threads` threads,
and scores each snapshot fully: held-out loss over the whole validation split and the sample
generations (add eval.checkpoints.probe=sentiment to include the probe).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from lm_tasks.config import load_config
from lm_tasks.stages import run_data, run_pretrain, run_tokenizer

BASE = ["trainer.max_steps=200", "trainer.checkpoint_every_n_steps=50", "trainer.enable_progress_bar=false",
        "cache.refresh=pretrain", "name=bench-checkpoint-eval"]


def measure(overrides: list[str]) -> dict:
    cfg = load_config(overrides)
    tokens = run_tokenizer(cfg, run_data(cfg))
    start = time.perf_counter()
    result = run_pretrain(cfg, tokens)
    seconds = time.perf_counter() - start
    mlflow.set_tracking_uri(cfg.tracking.tracking_uri)
    client = MlflowClient()
    history = sorted(client.get_metric_history(result.run_id, "train/tokens_per_sec"), key=lambda m: m.step)
    speeds = [m.value for m in history[1:]]  # the first step includes start-up
    return {"tokens_per_sec": round(len(speeds) / sum(1 / s for s in speeds), 1),  # equal tokens per step
            "median_tokens_per_sec": round(statistics.median(speeds), 1), "stage_seconds": round(seconds, 1),
            "evaluations": len(client.get_metric_history(result.run_id, "ckpt/bpb"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="outputs/benchmarks/checkpoint_eval.json")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    runs = {"off": [], "on": []}
    for repeat in range(args.repeats):
        for mode in runs:  # a seed per repeat: each "on" run's checkpoints are new weights, not cached evaluations
            runs[mode].append(measure([*BASE, *args.overrides, f"seed={1000 + repeat}",
                                       f"eval.checkpoints.enabled={mode == 'on'}"]))
            print(mode, runs[mode][-1], flush=True)

    def median(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[mode])

    result = {"overrides": [*BASE, *args.overrides], "runs": runs,
              "slowdown_percent": {key: round(100 * (1 - median("on", key) / median("off", key)), 2)
                                   for key in ("tokens_per_sec", "median_tokens_per_sec")},
              "stage_time_increase_percent": round(100 * (median("on", "stage_seconds") /
                                                          median("off", "stage_seconds") - 1), 2)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
