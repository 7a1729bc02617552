"""Time to quality: validation bits per byte against seconds of training, on Tiny Shakespeare.

    .venv/bin/python benchmarks/time_to_quality.py [--experiment shakespeare_speedrun] [--out ...] [overrides]

Overrides are the lifecycle's own (Hydra) overrides, applied after the preset: an ablation
of one option is e.g. `model.norm=rmsnorm`, or `model=modern` for a model preset.

Runs the data, tokenizer and pretraining stages of the preset (from ../shared/data), then
reads every validation point back from MLflow and prints val/bpb against seconds since
the first training step. The reference: nanoGPT's documented CPU configuration for this
text reached 2.72 bits per character (~bits per byte, the text is ASCII) after 115 s on
one of these 2-core machines.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from lm_tasks.config import load_config
from lm_tasks.stages import run_data, run_pretrain, run_tokenizer

NANOGPT = {"val_bpb": 2.72, "seconds": 115, "peak_memory_mb": 373}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="shakespeare_speedrun")
    parser.add_argument("--out", default="outputs/benchmarks/time_to_quality.json")
    parser.add_argument("overrides", nargs="*", help="config overrides after the preset, e.g. model.norm=rmsnorm")
    args = parser.parse_args()
    cfg = load_config([f"experiment={args.experiment}", *args.overrides, "trainer.enable_progress_bar=false",
                       "cache.refresh=pretrain"])  # always train: this measures training
    tokens = run_tokenizer(cfg, run_data(cfg))
    started = time.perf_counter()
    pretrained = run_pretrain(cfg, tokens)
    stage_seconds = time.perf_counter() - started

    mlflow.set_tracking_uri(cfg.tracking.tracking_uri)
    client = MlflowClient()
    first_step = min(m.timestamp for m in client.get_metric_history(pretrained.run_id, "train/loss"))
    curve = [{"seconds": round((m.timestamp - first_step) / 1000, 1), "step": m.step, "val_bpb": round(m.value, 4)}
             for m in sorted(client.get_metric_history(pretrained.run_id, "val/bpb"), key=lambda m: m.step)]
    reached = next((p for p in curve if p["val_bpb"] <= NANOGPT["val_bpb"]), None)
    rates = [m.value for m in client.get_metric_history(pretrained.run_id, "train/tokens_per_sec")]
    result = {
        "experiment": args.experiment, "overrides": args.overrides, "curve": curve,
        "final_val_bpb": curve[-1]["val_bpb"],
        "tokens_per_sec": round(sum(rates) / len(rates)) if rates else None,
        "training_seconds": curve[-1]["seconds"], "stage_seconds": round(stage_seconds, 1),
        "seconds_to_nanogpt_quality": reached["seconds"] if reached else None,
        "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "nanogpt_reference": NANOGPT,
    }
    print(f"{'seconds':>8} {'step':>6} {'val/bpb':>8}")
    for point in curve:
        print(f"{point['seconds']:>8.1f} {point['step']:>6} {point['val_bpb']:>8.3f}")
    print(f"\nfinal val/bpb {result['final_val_bpb']:.3f} after {result['training_seconds']:.0f} s of training "
          f"(stage {stage_seconds:.0f} s, {result['tokens_per_sec']} tokens/s, peak memory "
          f"{result['peak_memory_mb']} MB); nanoGPT: "
          f"{NANOGPT['val_bpb']} after {NANOGPT['seconds']} s. Reached {NANOGPT['val_bpb']} after "
          f"{result['seconds_to_nanogpt_quality']} s.")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
