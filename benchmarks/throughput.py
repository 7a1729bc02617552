"""Throughput, side by side in one run: the project's paths against the plain libraries.

    .venv/bin/python benchmarks/throughput.py [--steps 150] [--rounds 2] [--threads 2] [--out ...]

1. Training tokens/s and peak memory of the Lightning pretraining path (`pretrain()`, as
   the lifecycle runs it) and of a minimal hand-written PyTorch loop (nanoGPT style: the
   same model, optimizer, schedule, clipping and batches), each in its own process (so
   peak memory is its own), alternated `--rounds` times; their ratio.
2. Model FLOPs utilisation: 6N + 12*L*H*Q*T FLOPs per token (N parameters without the
   position table, L layers, H heads, Q head size, T context) against the measured peak
   of a large fp32 matmul here (on a GPU: the device's bf16 peak, 989 TFLOP/s on H100 SXM).
3. Tokenizer training MB/s through the pipeline (`train_tokenizer`) and calling
   `tokenizers` directly on the same texts.
4. Decode tokens/s with and without the KV cache (benchmarks/decode.py).

Data: the default lifecycle's cleaned data and packed tokens (computed, or taken from the
stage cache). Prints a table and writes JSON. A benchmark, never a test.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from lm_tasks.config import load_config
from lm_tasks.stages import run_data, run_tokenizer

OVERRIDES = ["trainer.enable_progress_bar=false", "promotion.enabled=false"]
WARMUP_STEPS = 10  # excluded from the timed window of both paths


def lightning_worker(cfg, tokens_dir: Path, steps: int) -> dict:
    """The project's path: pretrain() with validation and checkpoints only at the very end."""
    from lightning.pytorch.loggers import Logger

    from lm_tasks.training.pretrain import pretrain

    class Timings(Logger):  # records the Throughput callback's tokens/s, nothing else
        name, version, rates = "timings", "0", []

        def log_metrics(self, metrics, step=None):
            if "train/tokens_per_sec" in metrics and step is not None and step > WARMUP_STEPS:
                self.rates.append(metrics["train/tokens_per_sec"])

        def log_hyperparams(self, params, *args, **kwargs):
            pass

    logger = Timings()
    with tempfile.TemporaryDirectory() as out:
        pretrain(cfg, tokens_dir, tokens_dir / "tokenizer.json", out, logger)
    return {"tokens_per_sec": sum(logger.rates) / len(logger.rates)}


def raw_loop_worker(cfg, tokens_dir: Path, steps: int) -> dict:
    """The baseline: the same model, optimizer, schedule, clipping and batches, in a plain loop."""
    from lm_tasks.data.datamodule import PackedDataModule
    from lm_tasks.models.gpt import GPT
    from lm_tasks.training.optim import build_optimizer
    from lm_tasks.training.pretrain import model_config_for

    t = cfg.trainer
    torch.manual_seed(cfg.seed)
    model = GPT(model_config_for(cfg, tokens_dir / "tokenizer.json"))
    optimizer, scheduler = build_optimizer(model.optimizer_groups(cfg.optim.weight_decay), cfg.optim, steps)
    data = PackedDataModule(tokens_dir, cfg.model.block_size, t.global_batch_size, seed=cfg.seed, max_steps=steps)
    data.trainer = None
    data.setup()
    model.train()
    start, tokens = None, 0
    for step, (x, y) in enumerate(data.train_dataloader()):
        if step == WARMUP_STEPS:
            start, tokens = time.perf_counter(), 0
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.gradient_clip_val)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step % t.log_every_n_steps == 0:
            loss.item()  # what logging costs: one host sync every N steps
        tokens += x.numel()
    return {"tokens_per_sec": tokens / (time.perf_counter() - start)}


def run_worker(kind: str, args) -> dict:
    """One training path in a fresh process; its tokens/s and its own peak memory."""
    command = [sys.executable, __file__, "--worker", kind, "--steps", str(args.steps), "--threads", str(args.threads)]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def matmul_peak_flops(size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best


def tokenizer_mb_per_sec(cfg, data_dir: Path) -> dict:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from lm_tasks.data.prepare import load_prepared
    from lm_tasks.tokenizer import train_tokenizer

    train = load_prepared(data_dir)["train"]
    texts = list(train["text"])
    megabytes = sum(len(t.encode()) for t in texts) / 1e6

    def direct():
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=cfg.tokenizer.vocab_size, special_tokens=cfg.tokenizer.special_tokens,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tokenizer.train_from_iterator(texts, trainer=trainer)

    with tempfile.TemporaryDirectory() as out:
        pipeline = min(_timed(lambda: train_tokenizer(train, cfg.tokenizer, Path(out) / "t.json")) for _ in range(3))
    plain = min(_timed(direct) for _ in range(3))
    return {"megabytes": megabytes, "pipeline_mb_per_sec": megabytes / pipeline, "direct_mb_per_sec": megabytes / plain}


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--worker", choices=("lightning", "raw"), help=argparse.SUPPRESS)
    parser.add_argument("--out", default="outputs/benchmarks/throughput.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config([*OVERRIDES, f"trainer.max_steps={args.steps}", f"trainer.val_check_interval={args.steps}",
                       f"trainer.checkpoint_every_n_steps={args.steps}", "trainer.limit_val_batches=1"])
    data = run_data(cfg)
    tokens = run_tokenizer(cfg, data)
    tokens_dir = Path(tokens.output_dir)

    if args.worker:  # one measurement, in this fresh process
        worker = lightning_worker if args.worker == "lightning" else raw_loop_worker
        result = worker(cfg, tokens_dir, args.steps)
        result["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return

    runs = {"lightning": [], "raw": []}
    for _ in range(args.rounds):  # alternated, so drifts in machine load hit both
        for kind in runs:
            runs[kind].append(run_worker(kind, args))
    best = {kind: max(r["tokens_per_sec"] for r in results) for kind, results in runs.items()}
    memory = {kind: max(r["peak_memory_mb"] for r in results) for kind, results in runs.items()}

    peak = matmul_peak_flops()
    from lm_tasks.models.gpt import GPT
    from lm_tasks.training.pretrain import model_config_for

    per_token = GPT(model_config_for(cfg, tokens_dir / "tokenizer.json")).flops_per_token()  # as train/tflops
    tokenizer = tokenizer_mb_per_sec(cfg, Path(data.output_dir))
    from decode import tokens_per_second  # benchmarks/decode.py

    from lm_tasks.models.gpt import GPTConfig
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=2048, block_size=144, n_layer=4, n_head=4, n_embd=128)).eval()
    decode = {}
    for batch in (1, 8):  # one prompt, and a batch as the evaluate stage decodes
        prompt = torch.randint(0, 2048, (batch, 16))
        cache, none = (tokens_per_second(model, prompt, 128, use_cache, 3) for use_cache in (True, False))
        decode[f"batch_{batch}"] = {"cache": cache, "no_cache": none, "speedup": cache / none}

    result = {
        "device": "cpu", "threads": args.threads, "steps": args.steps, "rounds": args.rounds,
        "model": asdict(cfg.model), "global_batch_size": cfg.trainer.global_batch_size,
        "training": {kind: {"tokens_per_sec": best[kind], "peak_memory_mb": memory[kind], "runs": runs[kind]}
                     for kind in runs},
        "lightning_over_raw": best["lightning"] / best["raw"],
        "mfu": {"flops_per_token": per_token, "peak_flops": peak,
                "lightning": best["lightning"] * per_token / peak, "raw": best["raw"] * per_token / peak},
        "tokenizer": tokenizer,
        "decode": {**decode, "prompt_tokens": 16, "new_tokens": 128},
    }
    rows = [
        ("training tokens/s: Lightning path", f"{best['lightning']:,.0f}"),
        ("training tokens/s: plain PyTorch loop", f"{best['raw']:,.0f}"),
        ("ratio Lightning / plain", f"{result['lightning_over_raw']:.3f}"),
        ("peak memory MB: Lightning / plain", f"{memory['lightning']:,.0f} / {memory['raw']:,.0f}"),
        ("fp32 matmul peak GFLOP/s", f"{peak / 1e9:,.1f}"),
        ("MFU: Lightning / plain", f"{result['mfu']['lightning']:.1%} / {result['mfu']['raw']:.1%}"),
        ("tokenizer MB/s: pipeline / direct",
         f"{tokenizer['pipeline_mb_per_sec']:.2f} / {tokenizer['direct_mb_per_sec']:.2f}"),
    ] + [(f"decode tokens/s, batch {b.split('_')[1]}: KV cache / none",
          f"{d['cache']:,.0f} / {d['no_cache']:,.0f} ({d['speedup']:.1f}x)") for b, d in decode.items()]
    width = max(len(name) for name, _ in rows)
    print(f"\n{'measure':<{width}}  value  ({args.threads} threads, {args.steps} steps, best of {args.rounds})")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
