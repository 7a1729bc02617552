"""Data-stage cleaning throughput, 1 process vs 2, on real corpora from ../shared/data;
and MB/s and peak memory against corpus size.

    .venv/bin/python benchmarks/data_cleaning.py [--data-root ../shared/data] [--rounds 2]
                                                  [--out outputs/benchmarks/data_cleaning.json]
    .venv/bin/python benchmarks/data_cleaning.py --sizes 10,100,1000 [--num-proc 2] [--corpus-dir /tmp]
                                                  [--out outputs/benchmarks/data_scaling.json]

For each corpus it runs the whole data stage (`prepare_data`: read, normalise, length,
PII, quality rules, language, exact and near dedup, split, decontamination, parquet
shards, report) with `data.num_proc=1` and `=2`, alternated, best of `--rounds`, and
reports raw MB/s (input bytes / wall seconds) and what cleaning kept. Prints a table
and writes JSON. A benchmark, never a test.

`--sizes` (MB) runs the stage once per size on recombined real prose
(benchmarks/prose_corpus.py: training documents plus a held-out validation file, written
to `--corpus-dir` unless already there) with the default cleaning, each size in a fresh
subprocess, and reports MB/s and peak memory of the whole process tree (the stage and
its `num_proc` workers): the largest sum of RSS seen while sampling every 0.1 s, and the
largest single process (`ru_maxrss`). RSS counts the pages of memory-mapped Arrow files
that are resident, so it is an upper bound on the memory the stage needs; the anonymous
part (RSS minus file-backed pages, sampled the same way) is what it holds.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

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


def measure_size(corpus: Path, num_proc: int, extra: tuple[str, ...] = ()) -> dict:
    """One data-stage run on `corpus` (and its `.validation.jsonl`) in a fresh subprocess, with
    the process tree's memory sampled while it runs; `extra`: more overrides."""
    validation = corpus.with_name(corpus.stem + ".validation.jsonl")
    overrides = ["data=local", f"data.files=[{corpus}]", f"data.validation_files=[{validation}]",
                 f"data.num_proc={num_proc}", *extra]
    child = psutil.Popen([sys.executable, __file__, "--one", json.dumps(overrides)], stdout=subprocess.PIPE,
                         text=True)
    peak_tree = peak_tree_anon = peak_process_anon = 0
    while child.poll() is None:  # the sum over the tree: workers run at the same time as the parent
        sizes = _tree_memory(child)
        peak_tree = max(peak_tree, sum(rss for rss, _ in sizes))
        peak_tree_anon = max(peak_tree_anon, sum(anon for _, anon in sizes))
        peak_process_anon = max([peak_process_anon, *(anon for _, anon in sizes)])
        time.sleep(0.1)
    if child.returncode:
        raise RuntimeError(f"the data stage failed on {corpus} (exit code {child.returncode})")
    result = json.loads(child.stdout.read().strip().splitlines()[-1])
    return {**result, "mb_per_sec": result["bytes_in"] / 1e6 / result["seconds"], "peak_tree_rss_mb": peak_tree / 2**20,
            "peak_tree_anon_mb": peak_tree_anon / 2**20, "max_process_anon_mb": peak_process_anon / 2**20}


def _tree_memory(process: psutil.Process) -> list[tuple[int, int]]:
    """(RSS, anonymous RSS) of each process of the tree. RSS also counts the resident pages of
    memory-mapped files (the Arrow files), which the kernel drops under pressure; anonymous
    memory (RSS minus file-backed and shared pages) is what the processes really hold."""
    sizes = []
    for p in [process, *process.children(recursive=True)]:
        try:
            info = p.memory_info()
        except psutil.Error:  # ended between listing and reading
            continue
        sizes.append((info.rss, info.rss - info.shared))
    return sizes


def scaling(args) -> None:
    from prose_corpus import write_corpus  # benchmarks/ is this script's folder, first on sys.path

    results = {}
    for mb in [float(x) for x in args.sizes.split(",")]:
        corpus = Path(args.corpus_dir) / f"prose_{mb:g}mb.jsonl"
        if not corpus.with_name(corpus.stem + ".validation.jsonl").exists():
            write_corpus(corpus, int(mb * 1e6), Path(args.data_root))
        results[f"{mb:g}"] = r = measure_size(corpus, args.num_proc)
        print(f"{mb:>6g} MB: {r['seconds']:8.1f} s {r['mb_per_sec']:6.2f} MB/s  peak RSS: tree "
              f"{r['peak_tree_rss_mb']:,.0f} MB, largest process {r['max_process_rss_mb']:,.0f} MB; anonymous: "
              f"tree {r['peak_tree_anon_mb']:,.0f} MB, largest process {r['max_process_anon_mb']:,.0f} MB  "
              f"rows {r['rows_in']:,} -> {r['rows_out']:,}", flush=True)
    out = Path(args.out if args.out != DEFAULT_OUT else "outputs/benchmarks/data_scaling.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"num_proc": args.num_proc, "sizes": results}, indent=2) + "\n")


def run_once(overrides: list[str]) -> None:
    """The child of `measure_size`: run the stage, print the measurement as the last line."""
    from datasets import disable_progress_bars

    disable_progress_bars()
    cfg = load_config(overrides).data
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        report = prepare_data(cfg, out, seed=0)
        seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "digest": report["digest"],
                      "bytes_in": sum(steps[0]["bytes_in"] for steps in report["steps"].values()),
                      "rows_in": sum(steps[0]["rows_in"] for steps in report["steps"].values()),
                      "rows_out": sum(s["rows"] for s in report["splits"].values()),
                      # ru_maxrss is in KiB: the stage's own process, and its largest worker
                      "max_process_rss_mb": max(resource.getrusage(who).ru_maxrss for who in
                                                (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024}))


DEFAULT_OUT = "outputs/benchmarks/data_cleaning.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--sizes", help="MB of recombined prose, comma-separated: the scaling run")
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--corpus-dir", default="/tmp")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # JSON overrides: one run, in a subprocess
    args = parser.parse_args()
    if args.one:
        return run_once(json.loads(args.one))
    if args.sizes:
        return scaling(args)
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
