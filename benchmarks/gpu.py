"""GPU readiness: the GPU code paths of pretraining, run for real on a CUDA machine, with tokens/s and MFU.

    .venv/bin/python benchmarks/gpu.py [--steps 60] [--micro-batch 16] [--out outputs/benchmarks/gpu]

Runs the GPT-2-small shape (12 layers, 12 heads, 768 wide, 1,024 tokens of context) through
the project's own pretraining stage (`lm_tasks.stages.run_pretrain`: Lightning, the launcher,
checkpoints, MLflow) in each configuration:

    bf16        trainer=gpu: one GPU, bf16-mixed precision
    flash       the attention kernel check: SDPA restricted to FlashAttention on the model's shapes
    compile     trainer=gpu trainer.compile=true
    ddp         trainer=ddp: every visible GPU
    fsdp        trainer=fsdp: every visible GPU, one FSDP unit per Transformer block

and reports tokens/s (all GPUs) and MFU (the `train/mfu` the Throughput callback logs, against
the device's bf16 peak from Lightning's table, e.g. 989 TFLOP/s for an H100 or H200 SXM),
the median over the logged windows after the first quarter of the steps. It also asserts that
the evaluated model sits on the GPU (`compute_device`). Exits with a message on a machine without CUDA.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def overrides(root: Path, steps: int, micro_batch: int) -> list[str]:
    return [f"paths.root_dir={root}", "model=gpt2_small", "tokenizer.vocab_size=8192",
            f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}",
            f"trainer.checkpoint_every_n_steps={steps}", "trainer.limit_val_batches=2",
            f"trainer.micro_batch_size={micro_batch}", "trainer.log_every_n_steps=5",
            "trainer.enable_progress_bar=false", "promotion.enabled=false", "finetune=none"]


CONFIGS = {
    "bf16": ["trainer=gpu"],
    "compile": ["trainer=gpu", "trainer.compile=true"],
    "ddp": ["trainer=ddp"],
    "fsdp": ["trainer=fsdp"],
}


def flash_attention_check(model) -> str:
    """One forward of the model with SDPA limited to FlashAttention: raises if it cannot run."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    idx = torch.randint(0, model.config.vocab_size, (2, model.config.block_size), device="cuda")
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.autocast("cuda", dtype=torch.bfloat16):
        model(idx)
    return "FlashAttention ran through scaled_dot_product_attention"


def measure(name: str, extra: list[str], base: list[str], global_batch: int) -> dict:
    import mlflow

    from lm_tasks import tracking
    from lm_tasks.config import load_config
    from lm_tasks.stages import find, run_pretrain

    cfg = load_config([*base, *extra, f"trainer.global_batch_size={global_batch}"])
    start = time.perf_counter()
    result = run_pretrain(cfg, find(cfg, "tokenizer"))
    seconds = time.perf_counter() - start
    tracking.configure(cfg.tracking)
    client = mlflow.MlflowClient()

    def settled(metric: str) -> float:
        values = [m.value for m in sorted(client.get_metric_history(result.run_id, metric), key=lambda m: m.step)]
        return statistics.median(values[len(values) // 4:]) if values else float("nan")

    return {"config": name, "overrides": extra, "seconds": seconds, "tokens_per_sec": settled("train/tokens_per_sec"),
            "mfu": settled("train/mfu"), "best_val_loss": result.metrics["pretrain/best_val_loss"],
            "gpus": torch.cuda.device_count() if name in ("ddp", "fsdp") else 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--only", default=",".join(CONFIGS), help="configurations to run")
    parser.add_argument("--out", default="outputs/benchmarks/gpu")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs a CUDA GPU; none is visible here (torch.cuda.is_available() is False)")

    from lm_tasks.config import load_config
    from lm_tasks.models.io import load_pretrained
    from lm_tasks.stages import find, run_data, run_evaluate, run_tokenizer
    from lm_tasks.training.device import compute_device

    out = Path(args.out).resolve()
    base = overrides(out / "root", args.steps, args.micro_batch)
    cfg = load_config(base + ["trainer=gpu"])
    run_tokenizer(cfg, run_data(cfg))
    rows, notes = [], {"device": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(),
                       "torch": torch.__version__}
    for name in args.only.split(","):
        gpus = torch.cuda.device_count() if name in ("ddp", "fsdp") else 1
        rows.append(measure(name, CONFIGS[name], base, args.micro_batch * gpus))
        print(json.dumps(rows[-1]), flush=True)

    gpu_cfg = load_config(base + CONFIGS["bf16"] + [f"trainer.global_batch_size={args.micro_batch}"])
    pretrained = find(gpu_cfg, "pretrain")
    device = compute_device(gpu_cfg.trainer.accelerator, gpu_cfg.trainer.devices)  # where evaluation runs
    model = load_pretrained(Path(pretrained.output_dir) / "model", device=device)
    assert model.device.type == "cuda", f"the evaluated model is on {model.device}"
    notes["flash"] = flash_attention_check(model)
    notes["eval_bpb"] = run_evaluate(gpu_cfg, pretrained=pretrained).metrics["eval/lm/bpb"]

    lines = [f"GPU: {notes['device']} x {notes['gpus']}, torch {notes['torch']}; {notes['flash']}", "",
             "| configuration | GPUs | tokens/s | MFU | seconds |", "|---|---|---|---|---|"]
    lines += [f"| {r['config']} (`{' '.join(r['overrides'])}`) | {r['gpus']} | {r['tokens_per_sec']:,.0f} | "
              f"{r['mfu']:.1%} | {r['seconds']:.0f} |" for r in rows]
    print("\n".join(lines))
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps({"rows": rows, **notes}, indent=2))
    (out / "gpu.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
