"""Decode speed of GPT.generate with and without the KV cache, side by side.

    .venv/bin/python benchmarks/decode.py [--new-tokens 128] [--threads 2] [--out outputs/benchmarks/decode.json]

Same model (the `model=tiny` shape, random weights), same prompt, greedy decoding,
same thread count; prints a table and writes JSON. A benchmark, never a test.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lm_tasks.models.gpt import GPT, GPTConfig


def tokens_per_second(model: GPT, prompt: torch.Tensor, new_tokens: int, use_cache: bool, repeats: int) -> float:
    model.generate(prompt, 4, temperature=0, use_cache=use_cache)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = model.generate(prompt, new_tokens, temperature=0, use_cache=use_cache)
        best = min(best, time.perf_counter() - start)
    assert out.size(1) == prompt.size(1) + new_tokens
    return new_tokens * prompt.size(0) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="outputs/benchmarks/decode.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=2048, block_size=args.prompt_tokens + args.new_tokens, n_layer=4, n_head=4, n_embd=128)
    model = GPT(cfg).eval()
    prompt = torch.randint(0, cfg.vocab_size, (args.batch, args.prompt_tokens))
    cached = tokens_per_second(model, prompt, args.new_tokens, True, args.repeats)
    uncached = tokens_per_second(model, prompt, args.new_tokens, False, args.repeats)
    result = {"model": "tiny (4 x 128)", "new_tokens": args.new_tokens, "threads": args.threads,
              "batch": args.batch, "tokens_per_sec_cache": cached, "tokens_per_sec_no_cache": uncached,
              "speedup": cached / uncached}
    print(f"{'decode':<12}{'tokens/s':>12}\n{'KV cache':<12}{cached:>12.0f}\n{'no cache':<12}{uncached:>12.0f}\n"
          f"{'speed-up':<12}{cached / uncached:>11.2f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
