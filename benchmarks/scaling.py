"""Scaling, measured in one run: how costs grow with the corpus, the model and the cache entry.

    .venv/bin/python benchmarks/scaling.py [--sizes 10,100,1000] [--presets tiny,small,gpt2_small]
                                           [--skip data,pretrain,cache,gpt2] [--out outputs/benchmarks/scaling]

1. Data stage: MB/s of stage time, peak RSS and peak anonymous memory (RSS less the resident
   pages of memory-mapped files; the stage's process and its workers) at each
   corpus size in MB with data.num_proc=2, on new documents recombined from real prose
   (benchmarks/prose_corpus.py, benchmarks/data_cleaning.py); at the middle size also with one
   process and on a local Dask cluster of 2 workers (data.executor=dask).
2. Pretraining: seconds per step, tokens/s, peak RSS and MFU (against this machine's measured
   fp32 matmul peak) for each model preset, each in a fresh process, on the embedded corpus.
3. Cache hits: seconds for a hit on entries of 1 KB to 1 GB with stamps (`cache.verify=stamp`,
   the default) and with every file re-hashed (`cache.verify=full`).
4. The GPT-2-small shape through the lifecycle on CPU: pretraining a few steps, SIGKILLed after
   its first checkpoint and resumed, exported, evaluated and fine-tuned (classification); seconds
   and peak RSS of each stage.

Prints one table and writes scaling.json and scaling.md under --out. A benchmark, never a test.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCHMARKS.parent), str(BENCHMARKS)]

STEPS = {"tiny": 20, "small": 12, "gpt2_small": 5}  # timed steps per preset (the first is not timed)
BATCH = {"tiny": 32, "small": 32, "gpt2_small": 2}  # sequences per step
GPT2 = ["model=gpt2_small", "trainer.global_batch_size=2", "trainer.limit_val_batches=1",
        "trainer.max_steps=4", "trainer.checkpoint_every_n_steps=2", "trainer.val_check_interval=2",
        "eval.max_batches=8", "eval.batch_size=4", "eval.max_new_tokens=8", "finetune=classification",
        "finetune.classification.max_steps=3", "finetune.classification.batch_size=4",
        "finetune.classification.val_check_interval=3", "finetune.classification.max_length=128",
        "finetune.classification.data.max_rows=200"]


def base_overrides(root: Path) -> list[str]:
    return [f"paths.root_dir={root}", "trainer.enable_progress_bar=false", "promotion.enabled=false"]


def peak_rss_mb() -> float:
    """Peak resident memory of this process and of the finished children it waited for."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


# --- 2. pretraining per preset ---------------------------------------------------------------


def pretrain_worker(preset: str, root: Path) -> dict:
    """Train `preset` for its steps in this process; seconds per step after the first."""
    import lightning as L

    from lm_tasks.config import load_config
    from lm_tasks.models.io import load_pretrained
    from lm_tasks.stages import find
    from lm_tasks.training.pretrain import pretrain

    steps, batch = STEPS[preset] + 1, BATCH[preset]
    cfg = load_config([*base_overrides(root), f"model={preset}", f"trainer.max_steps={steps}",
                       f"trainer.global_batch_size={batch}", f"trainer.val_check_interval={steps}",
                       f"trainer.checkpoint_every_n_steps={steps}", "trainer.limit_val_batches=1"])
    tokens = Path(find(cfg, "tokenizer").output_dir)

    class StepClock(L.Callback):  # when each optimizer step ended
        def __init__(self):
            self.ends: list[float] = []

        def on_train_batch_end(self, *args):
            self.ends.append(time.perf_counter())

    clock = StepClock()
    with tempfile.TemporaryDirectory() as out:
        pretrain(cfg, tokens, tokens / "tokenizer.json", out, callbacks=(clock,))
        model = load_pretrained(Path(out) / "model")
    step_s = statistics.median(b - a for a, b in zip(clock.ends, clock.ends[1:]))
    tokens_per_step = batch * cfg.model.block_size
    return {"preset": preset, "parameters": model.num_parameters(), "block_size": cfg.model.block_size,
            "batch": batch, "s_per_step": step_s, "tokens_per_sec": tokens_per_step / step_s,
            "flops_per_token": model.flops_per_token(), "peak_rss_mb": peak_rss_mb()}


# --- 3. cache hits against entry size ----------------------------------------------------------


def cache_hits(folder: Path, sizes_mb: list[float]) -> list[dict]:
    from lm_tasks.cache import StageCache
    from lm_tasks.config import CacheConfig

    rows = []
    for size in sizes_mb:
        key = f"{int(size * 1000):064x}"[-64:]
        config = dict(enabled=True, store=str(folder / "store"), staging_dir=str(folder / "staging"), refresh=[],
                      stamp_dir=str(folder / "stamps"))
        cache = StageCache(CacheConfig(**config))
        with cache.claim("pretrain", key) as work:
            with open(work / "model.bin", "wb") as f:  # written in 64 MB pieces: flat memory
                left = int(size * 1e6)
                while left > 0:
                    f.write(os.urandom(min(left, 64 << 20)))
                    left -= 64 << 20
            (work / "config.json").write_text("{}")
            cache.commit("pretrain", key, work, {"stage": "pretrain"})
        stamp = _best_of(3, lambda: cache.lookup("pretrain", key))
        full = _best_of(1, lambda: StageCache(CacheConfig(**config, verify="full")).lookup("pretrain", key))
        rows.append({"entry_mb": size, "hit_s_stamp": stamp, "hit_s_full": full})
        cache._discard(cache.entry_dir("pretrain", key))
    return rows


def _best_of(n: int, fn) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        assert fn() is not None, "the entry was not found"
        times.append(time.perf_counter() - start)
    return min(times)


# --- 4. GPT-2 small through the lifecycle --------------------------------------------------------


def gpt2_worker(part: str, root: Path) -> dict:
    """One part of the GPT-2-small lifecycle in this process: `pretrain` or `downstream`."""
    from lm_tasks.config import load_config
    from lm_tasks.stages import find, run_evaluate, run_finetune, run_pretrain

    cfg = load_config([*base_overrides(root), *GPT2])
    start = time.perf_counter()
    if part == "pretrain":
        result = run_pretrain(cfg)
        out = {"pretrain_s": time.perf_counter() - start, "best_val_loss": result.metrics["pretrain/best_val_loss"],
               "parameters": result.metrics["pretrain/parameters"]}
    else:
        tuned = run_finetune(cfg, "classification")
        finetune_s = time.perf_counter() - start
        evaluated = run_evaluate(cfg, tuned={"classification": tuned})
        out = {"finetune_s": finetune_s, "evaluate_s": time.perf_counter() - start - finetune_s,
               "finetune_accuracy": tuned.metrics.get("finetune/classification/best_val_accuracy"),
               "eval_bpb": evaluated.metrics.get("eval/lm/bpb"),
               "hf_export": (Path(find(cfg, "pretrain").output_dir) / "hf" / "config.json").is_file()}
    return {**out, "peak_rss_mb": peak_rss_mb()}


def gpt2_lifecycle(root: Path) -> dict:
    """Pretraining killed by SIGKILL once its first checkpoint is written, resumed, then the rest."""
    from lm_tasks.config import load_config
    from lm_tasks.stage_keys import pretrain_key
    from lm_tasks.stages import find

    cfg = load_config([*base_overrides(root), *GPT2])
    partial = Path(cfg.cache.store) / "pretrain" / f"{pretrain_key(cfg, find(cfg, 'tokenizer').digest)}.partial"
    pretrain = ["--worker", "gpt2", "--part", "pretrain", "--root", str(root)]
    killed = _worker(pretrain, kill_when=partial / "checkpoints" / "last.ckpt")
    resumed = _worker(pretrain)
    downstream = _worker(["--worker", "gpt2", "--part", "downstream", "--root", str(root)])
    resumed["pretrain_peak_rss_mb"] = resumed.pop("peak_rss_mb")
    downstream["downstream_peak_rss_mb"] = downstream.pop("peak_rss_mb")
    downstream.pop("log_resumed")
    return {"killed_after_s": killed["killed_after_s"], "resumed": resumed.pop("log_resumed"), **resumed,
            **downstream}


def _worker(args: list[str], kill_when: Path | None = None) -> dict:
    command = [sys.executable, __file__, *args]
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
        if kill_when is not None:
            while process.poll() is None and not kill_when.is_file():
                time.sleep(0.2)
            process.send_signal(signal.SIGKILL)
            process.wait()
            return {"killed_after_s": time.perf_counter() - start}
        stdout, _ = process.communicate()
        log.seek(0)
        text = log.read()
    if process.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{text[-3000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["log_resumed"] = "resuming from" in text
    return result


# --- 1. data stage -------------------------------------------------------------------------------


def data_stage(sizes_mb: list[float], corpus_dir: Path, data_root: Path) -> list[dict]:
    """The data stage at each size with data.num_proc=2; at the middle size also with one process
    and with data.executor=dask (a local cluster of 2 workers), side by side."""
    from data_cleaning import measure_size  # benchmarks/data_cleaning.py
    from prose_corpus import write_corpus

    runs = [(mb, 2, ()) for mb in sizes_mb]
    middle = sizes_mb[len(sizes_mb) // 2]
    runs += [(middle, 1, ()), (middle, 2, ("data.executor=dask",))]
    rows = []
    for mb, procs, extra in runs:
        corpus = corpus_dir / f"prose_{mb:g}mb.jsonl"
        if not corpus.with_name(corpus.stem + ".validation.jsonl").exists():
            write_corpus(corpus, int(mb * 1e6), data_root)
        r = measure_size(corpus, procs, extra)
        rows.append({"corpus_mb": mb, "how": "dask, 2 workers" if extra else f"{procs} process" + "es" * (procs > 1),
                     "seconds": r["seconds"], "mb_per_sec": r["mb_per_sec"], "peak_rss_mb": r["peak_tree_rss_mb"],
                     "largest_process_mb": r["max_process_rss_mb"], "peak_anon_mb": r["peak_tree_anon_mb"],
                     "largest_process_anon_mb": r["max_process_anon_mb"], "digest": r["digest"]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


# --- the run -------------------------------------------------------------------------------------


def prepare_inputs(root: Path, extra: list[str] = ()) -> None:
    """The embedded corpus cleaned and tokenised once (cached) for the workers that train."""
    from lm_tasks.config import load_config
    from lm_tasks.stages import run_data, run_tokenizer

    cfg = load_config([*base_overrides(root), *extra])
    run_tokenizer(cfg, run_data(cfg))


def table(result: dict) -> str:
    lines = ["| measure | value |", "|---|---|"]
    for row in result.get("data", []):
        lines.append(f"| data stage, {row['corpus_mb']:,.0f} MB, {row['how']} | {row['mb_per_sec']:.2f} MB/s, "
                     f"{row['seconds']:.0f} s, peak RSS {row['peak_rss_mb']:,.0f} MB (process tree), "
                     f"{row['largest_process_mb']:,.0f} MB (largest process); anonymous memory "
                     f"{row['peak_anon_mb']:,.0f} MB (tree), {row['largest_process_anon_mb']:,.0f} MB (largest process) |")
    peak = result.get("matmul_peak_gflops")
    for row in result.get("pretrain", []):
        mfu = row["tokens_per_sec"] * row["flops_per_token"] / (peak * 1e9) if peak else float("nan")
        lines.append(f"| pretraining `{row['preset']}` ({row['parameters'] / 1e6:.1f} M parameters, context "
                     f"{row['block_size']}, batch {row['batch']}) | {row['s_per_step']:.2f} s/step, "
                     f"{row['tokens_per_sec']:,.0f} tokens/s, MFU {mfu:.1%}, peak RSS {row['peak_rss_mb']:,.0f} MB |")
    for row in result.get("cache", []):
        lines.append(f"| cache hit, {row['entry_mb']:,.3g} MB entry | {row['hit_s_stamp'] * 1e3:.1f} ms "
                     f"(stamps); {row['hit_s_full']:.3f} s (`cache.verify=full`) |")
    gpt2 = result.get("gpt2")
    if gpt2:
        lines.append(f"| GPT-2 small lifecycle ({gpt2['parameters'] / 1e6:.1f} M parameters): pretraining 4 "
                     f"steps, SIGKILLed after the step-2 checkpoint and resumed | resumed: {gpt2['resumed']}; "
                     f"{gpt2['pretrain_s']:.0f} s after the resume, peak RSS {gpt2['pretrain_peak_rss_mb']:,.0f} MB |")
        lines.append(f"| GPT-2 small: fine-tune (3 steps) + evaluate | {gpt2['finetune_s']:.0f} s + "
                     f"{gpt2['evaluate_s']:.0f} s, peak RSS {gpt2['downstream_peak_rss_mb']:,.0f} MB; "
                     f"Hugging Face export: {gpt2['hf_export']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000", help="data-stage corpus sizes in MB")
    parser.add_argument("--presets", default="tiny,small,gpt2_small")
    parser.add_argument("--cache-sizes", default="0.001,10,100,1000", help="cache entry sizes in MB")
    parser.add_argument("--corpus-dir", default="/tmp", help="where the recombined prose corpora are kept")
    parser.add_argument("--data-root", default="../shared/data", help="the real corpora they are made from")
    parser.add_argument("--skip", default="", help="sections to skip: data,pretrain,cache,gpt2")
    parser.add_argument("--out", default="outputs/benchmarks/scaling")
    parser.add_argument("--worker", choices=("pretrain", "gpt2"), help=argparse.SUPPRESS)
    parser.add_argument("--preset", help=argparse.SUPPRESS)
    parser.add_argument("--part", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # one measurement, in this fresh process
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")  # to stderr
        root = Path(args.root)
        result = pretrain_worker(args.preset, root) if args.worker == "pretrain" else gpt2_worker(args.part, root)
        print(json.dumps(result))
        return

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    result: dict = {"cpu_count": os.cpu_count()}

    def save() -> None:  # after every section: a later failure loses nothing measured
        (out / "scaling.json").write_text(json.dumps(result, indent=2))

    if "gpt2" not in skip:  # first: the longest-running, most fragile section
        root = out / "root"
        prepare_inputs(root, GPT2)
        result["gpt2"] = gpt2_lifecycle(root)
        save()
    if "data" not in skip:
        result["data"] = data_stage([float(s) for s in args.sizes.split(",")], Path(args.corpus_dir),
                                    Path(args.data_root))
        save()
    if "pretrain" not in skip:
        from throughput import matmul_peak_flops  # benchmarks/throughput.py

        root = out / "root"
        prepare_inputs(root)
        result["matmul_peak_gflops"] = matmul_peak_flops() / 1e9
        result["pretrain"] = [_worker(["--worker", "pretrain", "--preset", preset, "--root", str(root)])
                              for preset in args.presets.split(",")]
        save()
    if "cache" not in skip:
        with tempfile.TemporaryDirectory(dir=out) as folder:
            result["cache"] = cache_hits(Path(folder), [float(s) for s in args.cache_sizes.split(",")])
        save()
    text = table(result)
    print(text)
    (out / "scaling.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
