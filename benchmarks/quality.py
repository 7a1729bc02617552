"""Task quality on real data (../shared/data), each task beside its trivial baseline.

    .venv/bin/python benchmarks/quality.py [--minutes 15] [--tasks classification,qa,...] [--out outputs/benchmarks/quality.json]

Pretrains the default model (the `make run` configuration) once, then fine-tunes and
evaluates each task on its real dataset, selected by config overrides alone (the same
ones the README shows), with a wall-clock training budget per task. Prints a table and
writes JSON. A benchmark, never a test.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lm_tasks.config import load_config
from lm_tasks.stages import run_data, run_finetune, run_pretrain, run_tokenizer
from lm_tasks.tasks.evaluate import evaluate_task

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# task -> (headline metric, config overrides that point the task at the real dataset)
REAL_DATA = {
    "classification": ("accuracy", [
        "finetune.classification.data.source=local",
        f"finetune.classification.data.train_files=[{DATA}/sst2/train.jsonl]",
        f"finetune.classification.data.validation_files=[{DATA}/sst2/validation.jsonl]",
        "finetune.classification.data.label_names=[negative,positive]",
    ]),
    "qa": ("f1", [
        "finetune.qa.data.source=local",
        f"finetune.qa.data.train_files=[{DATA}/squad_v1.1/validation.jsonl]",
        "finetune.qa.data.split_by=title",
        "finetune.qa.allow_no_answer=false",  # SQuAD v1.1: every question has an answer
    ]),
    "summarization": ("rouge1", [
        "finetune.summarization.data.source=local",
        f"finetune.summarization.data.train_files=[{DATA}/scitldr/train.jsonl]",
        f"finetune.summarization.data.validation_files=[{DATA}/scitldr/validation.jsonl]",
        "finetune.summarization.data.columns.source=document",
        "finetune.summarization.data.columns.target=summary",
    ]),
    "translation": ("bleu", [
        "finetune.translation.data.source=local",
        f"finetune.translation.data.train_files=[{DATA}/multi30k_en_de/train.jsonl]",
        f"finetune.translation.data.validation_files=[{DATA}/multi30k_en_de/validation.jsonl]",
        "finetune.translation.data.columns.source=translation.en",
        "finetune.translation.data.columns.target=translation.de",
        "finetune.translation.max_new_tokens=64",
    ]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=15.0, help="training budget per task")
    parser.add_argument("--tasks", default=",".join(REAL_DATA))
    parser.add_argument("--name", default="quality")
    parser.add_argument("--out", default="outputs/benchmarks/quality.json")
    args = parser.parse_args()
    common = [f"name={args.name}", "trainer.enable_progress_bar=false"]

    base = load_config(common)
    started = time.perf_counter()
    pretrained = run_pretrain(base, run_tokenizer(base, run_data(base)))  # from the stage cache when done before
    pretrain_seconds = time.perf_counter() - started

    rows = []
    for task in args.tasks.split(","):
        metric, overrides = REAL_DATA[task]
        cfg = load_config(common + [f"finetune={task}", f"finetune.{task}.max_steps=100000",
                                    f"finetune.{task}.max_minutes={args.minutes}", *overrides])
        start = time.perf_counter()
        tuned = run_finetune(cfg, task, pretrained)
        result = evaluate_task(cfg, task, Path(tuned.output_dir) / "model", Path(cfg.paths.output_dir) / "quality" / task)
        rows.append({"task": task, "metric": metric, "model": result["metrics"][metric],
                     "baseline": result["baseline"][metric], "examples": result["examples"],
                     "seconds": round(time.perf_counter() - start, 1), "all": result})
        print(f"{task}: {metric} {rows[-1]['model']:.4g} vs baseline {rows[-1]['baseline']:.4g}", flush=True)

    print(f"\npretraining: {pretrain_seconds:.0f} s (from the stage cache if ~0)\n")
    print("| task | metric | model | baseline | examples | seconds |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['task']} | {r['metric']} | {r['model']:.4g} | {r['baseline']:.4g} | {r['examples']} | {r['seconds']} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"pretrain_seconds": pretrain_seconds, "tasks": rows}, indent=2))


if __name__ == "__main__":
    main()
