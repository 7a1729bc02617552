"""Data-stage cleaning throughput, 1 process vs 2, on real corpora from ../shared/data.

    .venv/bin/python benchmarks/data_cleaning.py [--data-root ../shared/data] [--rounds 2]
                                                  [--out outputs/benchmarks/data_cleaning.json]

For each corpus it runs the whole data stage (`prepare_data`: read, normalise, length,
PII, quality rules, language, exact and near dedup, split, decontamination, parquet
shards, report) with `data.num_proc=1` and `=2`, alternated, best of `--rounds`, and
reports raw MB/s (input bytes / wall seconds) and what cleaning kept. Prints a table
and writes JSON. A benchmark, never a test.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from lm_tasks.config import load_config
from lm_tasks.data.prepare import prepare_data

CORPORA = {  # name -> overrides, relative to --data-root
    "tinyshakespeare": ["data=local", "data.files=[{root}/tinyshakespeare/input.txt]"],
    "scitldr": ["data=local", "data.files=[{root}/scitldr/train.jsonl,{root}/scitldr/validation.jsonl,"
                "{root}/scitldr/test.jsonl]", "data.text_column=document"],
}


def measure(overrides: list[str]) -> dict:
    cfg = load_config(overrides).data
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        report = prepare_data(cfg, out, seed=0)
        seconds = time.perf_counter() - start
    steps = report["steps"]["train"]
    return {"seconds": seconds, "bytes_in": steps[0]["bytes_in"], "rows_in": steps[0]["rows_in"],
            "rows_out": sum(s["rows"] for s in report["splits"].values()),
            "dropped": {s["step"]: s["rows_in"] - s["rows_out"] for s in steps if s["rows_in"] != s["rows_out"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default="outputs/benchmarks/data_cleaning.json")
    args = parser.parse_args()
    root = Path(args.data_root).resolve()
    results = {}
    for name, template in CORPORA.items():
        overrides = [o.format(root=root) for o in template]
        runs = {1: [], 2: []}
        for _ in range(args.rounds):  # alternated, so drifts in machine load hit both
            for procs in runs:
                runs[procs].append(measure(overrides + [f"data.num_proc={procs}"]))
        best = {procs: min(r, key=lambda x: x["seconds"]) for procs, r in runs.items()}
        results[name] = {f"{procs}_proc": {**b, "mb_per_sec": b["bytes_in"] / 1e6 / b["seconds"]}
                         for procs, b in best.items()}

    print(f"{'corpus':<16}{'MB':>7}{'rows in':>9}{'kept':>8}{'1 proc MB/s':>13}{'2 procs MB/s':>14}{'ratio':>7}")
    for name, r in results.items():
        one, two = r["1_proc"], r["2_proc"]
        print(f"{name:<16}{one['bytes_in'] / 1e6:>7.2f}{one['rows_in']:>9,}{one['rows_out']:>8,}"
              f"{one['mb_per_sec']:>13.2f}{two['mb_per_sec']:>14.2f}{two['mb_per_sec'] / one['mb_per_sec']:>7.2f}")
        print(f"{'':<16}dropped: {one['dropped']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
