"""Quality per CPU-minute on real data (../shared/data): each row's model beside its baseline.

    .venv/bin/python benchmarks/quality.py [--rows sst2,squad,scitldr,multi30k,tinyshakespeare]
        [--reuse] [--out outputs/benchmarks/quality.json] [overrides...]

Every task row runs the lifecycle's stages under its task kind's preset
(`experiment=<kind>_10min`: at most 10 minutes of pretraining on the task's own training
text, then at most 10 minutes of fine-tuning), pointed at the dataset by the usual `data.*`
keys alone, and is scored on the official test split where one exists (SciTLDR,
Multi30k), else on validation (SST-2; SQuAD v1.1 dev, split by article). The Tiny
Shakespeare row trains `experiment=shakespeare_speedrun` (at most 115 s) and fits the
Kneser-Ney trigram on the same split. Extra overrides apply to every row (an ablation).
Prints the table with the wall time of each stage and writes JSON. A benchmark, never a test:
each task row takes up to ~25 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

from lm_tasks.config import load_config
from lm_tasks.stages import run_data, run_evaluate, run_finetune, run_pretrain, run_tokenizer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass
class Row:
    task: str  # the fine-tuning task, or "lm" for held-out bits per byte
    metric: str
    target: float
    baseline: str
    overrides: list[str]

    @property
    def higher_is_better(self) -> bool:
        return self.task != "lm"


def _task(task: str, **keys) -> list[str]:
    return [f"experiment={task}_10min", f"finetune.{task}.data.source=local",
            *(f"finetune.{task}.data.{key}={value}" for key, value in keys.items())]


ROWS = {
    "sst2": Row("classification", "accuracy", 0.80, "majority class", _task(
        "classification", train_files=f"[{DATA}/sst2/train.jsonl]",
        validation_files=f"[{DATA}/sst2/validation.jsonl]", label_names="[negative,positive]")),
    "squad": Row("qa", "f1", 20.0, "sliding window", [
        *_task("qa", train_files=f"[{DATA}/squad_v1.1/validation.jsonl]", split_by="title"),
        "finetune.qa.allow_no_answer=false"]),  # SQuAD v1.1: every question has an answer
    "scitldr": Row("summarization", "rougeL", 0.25, "lead sentence", _task(
        "summarization", train_files=f"[{DATA}/scitldr/train.jsonl]",
        validation_files=f"[{DATA}/scitldr/validation.jsonl]", test_files=f"[{DATA}/scitldr/test.jsonl]",
        **{"columns.source": "document", "columns.target": "summary"})),
    "multi30k": Row("translation", "bleu", 15.0, "source copied", _task(
        "translation", train_files=f"[{DATA}/multi30k_en_de/train.jsonl]",
        validation_files=f"[{DATA}/multi30k_en_de/validation.jsonl]",
        test_files=f"[{DATA}/multi30k_en_de/test.jsonl]",
        **{"columns.source": "translation.en", "columns.target": "translation.de"})),
    "tinyshakespeare": Row("lm", "bpb", 1.94, "Kneser-Ney order 3", ["experiment=shakespeare_speedrun"]),
}


def run_row(name: str, row: Row, extra: list[str], reuse: bool) -> dict:
    refresh = [] if reuse else ["cache.refresh=all"]  # measure the stages, not the cache
    cfg = load_config([*row.overrides, f"name=quality-{name}", "trainer.enable_progress_bar=false",
                       *refresh, *extra])
    seconds = {}

    def timed(stage: str, result):
        seconds[stage] = round(result.seconds, 1)
        return result

    tokens = timed("tokenizer", run_tokenizer(cfg, timed("data", run_data(cfg))))
    pretrained = timed("pretrain", run_pretrain(cfg, tokens))
    if row.task == "lm":
        report = _report(timed("evaluate", run_evaluate(cfg, tokens, pretrained, tuned={})))["lm"]
        model = report["metrics"]["bpb"]
        ngram = load_config([*row.overrides, f"name=quality-{name}-ngram", "model=ngram", *refresh, *extra])
        fitted = run_pretrain(ngram, tokens)
        seconds["baseline"] = round(fitted.seconds, 1)
        baseline = _report(run_evaluate(ngram, tokens, fitted, tuned={}))["lm"]["metrics"]["bpb"]
        split, examples = "validation", None
    else:
        tuned = timed("finetune", run_finetune(cfg, row.task, pretrained))
        report = _report(timed("evaluate", run_evaluate(cfg, tokens, pretrained, tuned={row.task: tuned})))[row.task]
        model, baseline = report["metrics"][row.metric], report["baseline"][row.metric]
        split, examples = report["split"], report["examples"]
    better = model >= row.target if row.higher_is_better else model < row.target
    return {"row": name, "task": row.task, "metric": row.metric, "model": model, "baseline": baseline,
            "baseline_kind": row.baseline, "target": row.target, "reached": better, "split": split,
            "examples": examples, "seconds": seconds,
            "mlflow_run": pretrained.run_id, "overrides": [*row.overrides, *extra]}


def _report(result) -> dict:
    return json.loads((Path(result.output_dir) / "report.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    parser.add_argument("--reuse", action="store_true", help="take stages from the cache (times then read ~0)")
    parser.add_argument("--out", default="outputs/benchmarks/quality.json")
    parser.add_argument("overrides", nargs="*", help="config overrides for every row, e.g. model.pos_encoding=learned")
    args = parser.parse_args()
    results = []
    for name in args.rows.split(","):
        started = time.perf_counter()
        result = run_row(name, ROWS[name], args.overrides, args.reuse)
        result["wall_seconds"] = round(time.perf_counter() - started, 1)
        results.append(result)
        print(json.dumps({k: v for k, v in result.items() if k != "overrides"}), flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))  # after every row: a long run keeps what it did

    print("\n| dataset | metric | model | baseline | target | reached | data | tokenizer | pretrain | finetune | evaluate |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        s = r["seconds"]
        print(f"| {r['row']} ({r['split']}) | {r['metric']} | {r['model']:.4g} | {r['baseline']:.4g} "
              f"({r['baseline_kind']}) | {'<' if r['task'] == 'lm' else '>='} {r['target']} | "
              f"{'yes' if r['reached'] else 'no'} | " + " | ".join(
                  f"{s[k]:.0f} s" if k in s else "-" for k in ("data", "tokenizer", "pretrain", "finetune", "evaluate"))
              + " |")


if __name__ == "__main__":
    main()
