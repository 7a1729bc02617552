"""The model families (and the GPT's positional encodings) compared at one CPU budget.

    .venv/bin/python benchmarks/model_families.py [--families ngram,rnn,lstm,gru,gpt] [--no-run]

Runs two Hydra multiruns of the lifecycle on Tiny Shakespeare (../shared/data) with
`experiment=model_families`, the way a user would:

    python -m flows.lifecycle -m experiment=model_families model=ngram,rnn,lstm,gru,gpt
    python -m flows.lifecycle -m experiment=model_families model=gpt model.pos_encoding=learned,sinusoidal

(the stage cache runs the shared data and tokenizer stages once, and the learned-position
GPT once), then reads the runs back from MLflow and prints one table: parameters,
training steps and seconds, tokens/s, and bits per byte on the whole held-out split
(`eval/lm/bpb`) beside the unigram baseline. `--no-run` only reads the store.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from lm_tasks.config import load_config

EXPERIMENT = "model_families"


def sweep(overrides: list[str]) -> None:
    command = [sys.executable, "-m", "flows.lifecycle", "-m", f"experiment={EXPERIMENT}",
               "trainer.enable_progress_bar=false", *overrides]
    print("$", " ".join(command[1:]), flush=True)
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    subprocess.run(command, check=True, env=env)


def rows(client: MlflowClient, experiment_id: str) -> list[dict]:
    """One row per distinct model (family + positional encoding), the newest lifecycle run of each."""
    table = {}
    for parent in client.search_runs([experiment_id], "tags.stage = 'lifecycle' and attributes.status = 'FINISHED'",
                                     order_by=["attributes.start_time DESC"]):
        params = parent.data.params
        family = params["model.family"]
        name = family if family != "gpt" else f"gpt ({params['model.pos_encoding']} positions)"
        if name in table:
            continue
        # The runs that did the work (a cached stage's run belongs to an earlier lifecycle).
        pretrain = client.get_run(parent.data.tags["stage.pretrain.run_id"])
        evaluation = client.get_run(parent.data.tags["stage.evaluate.run_id"]).data.metrics
        losses = client.get_metric_history(pretrain.info.run_id, "train/loss")
        tokens_per_sec = [m.value for m in client.get_metric_history(pretrain.info.run_id, "train/tokens_per_sec")]
        table[name] = {
            "model": name,
            "parameters": int(pretrain.data.metrics["pretrain/parameters"]),
            "steps": max((m.step for m in losses), default=0),
            "train_seconds": round((pretrain.info.end_time - pretrain.info.start_time) / 1000, 1),
            "tokens_per_sec": round(sorted(tokens_per_sec)[len(tokens_per_sec) // 2]) if tokens_per_sec else None,
            "val_bpb": round(pretrain.data.metrics["val/bpb"], 3),
            "eval_bpb": round(evaluation["eval/lm/bpb"], 3),
            "unigram_bpb": round(evaluation["eval/lm/baseline_bpb"], 3),
        }
    return sorted(table.values(), key=lambda r: r["eval_bpb"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="ngram,rnn,lstm,gru,gpt")
    parser.add_argument("--no-run", action="store_true", help="only read the MLflow store")
    parser.add_argument("--out", default="outputs/benchmarks/model_families.json")
    args, overrides = parser.parse_known_args()
    if not args.no_run:
        sweep([f"model={args.families}", *overrides])
        sweep(["model=gpt", "model.pos_encoding=learned,sinusoidal", *overrides])

    cfg = load_config([f"experiment={EXPERIMENT}", *overrides])
    mlflow.set_tracking_uri(cfg.tracking.tracking_uri)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(cfg.tracking.experiment_name)
    table = rows(client, experiment.experiment_id)
    print(f"\nTiny Shakespeare, byte-level BPE {cfg.tokenizer.vocab_size}, budget {cfg.trainer.max_minutes} min "
          f"or {cfg.trainer.max_steps} steps of {cfg.trainer.global_batch_size} x {cfg.model.block_size} tokens\n")
    print("| model | parameters (n-gram: n-grams) | steps | stage seconds | tokens/s | val/bpb | eval/lm/bpb "
          "| unigram bpb |")
    print("|---|---|---|---|---|---|---|---|")
    for r in table:
        print(f"| {r['model']} | {r['parameters']:,} | {r['steps']} | {r['train_seconds']} | "
              f"{r['tokens_per_sec'] or '-'} | {r['val_bpb']} | **{r['eval_bpb']}** | {r['unigram_bpb']} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
