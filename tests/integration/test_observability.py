"""What a training run reports about itself: system metrics, throughput, FLOPs and MFU, a profile."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from lm_tasks import tracking
from lm_tasks.config import load_config
from lm_tasks.models.gpt import GPT, GPTConfig
from lm_tasks.stages import run_data, run_pretrain, run_tokenizer


def test_gpt_flops_per_token_follow_the_palm_formula():
    config = GPTConfig(vocab_size=1000, n_layer=3, n_head=4, n_embd=64, block_size=128, dropout=0.0, bias=False)
    model = GPT(config)
    weights = sum(p.numel() for p in model.parameters()) - model.wpe.weight.numel()  # head tied to wte
    assert model.flops_per_token() == 6 * weights + 12 * 3 * 4 * 16 * 128


@pytest.mark.slow
def test_pretraining_run_records_system_metrics_throughput_mfu_and_a_profile(smoke_overrides):
    cfg = load_config(smoke_overrides + [
        "trainer.max_steps=30", "trainer.log_every_n_steps=5", "trainer.profiler=simple",
        "trainer.peak_tflops=0.2",  # this CPU's fp32 matmul peak is about 0.21 TFLOP/s (README)
        "tracking.system_metrics_interval_s=1", "model.block_size=64",
    ])
    tokens = run_tokenizer(cfg, run_data(cfg))
    result = run_pretrain(cfg, tokens)
    tracking.configure(cfg.tracking)
    client = mlflow.MlflowClient()
    metrics = client.get_run(result.run_id).data.metrics
    assert metrics["system/cpu_utilization_percentage"] >= 0
    assert metrics["system/system_memory_usage_megabytes"] > 100
    assert metrics["train/tokens_per_sec"] > 0
    history = client.get_metric_history(result.run_id, "train/tflops")
    rates = client.get_metric_history(result.run_id, "train/tokens_per_sec")
    assert len(history) == 6 and [m.step for m in history] == [m.step for m in rates]  # every 5 of 30 steps
    tflops = history[-1].value
    rate = metrics["train/tokens_per_sec"]
    assert tflops == pytest.approx(rate * _flops_per_token(result) / 1e12, rel=1e-3)
    assert metrics["train/mfu"] == pytest.approx(tflops / 0.2, rel=1e-3) and 0 < metrics["train/mfu"] < 1
    profile = Path(result.output_dir) / "profile"
    report = next(profile.iterdir()).read_text()
    assert "training_step" in report and "Mean duration" in report
    artifacts = [f.path for f in client.list_artifacts(result.run_id, "profile")]
    assert artifacts and artifacts[0].startswith("profile/")


@pytest.mark.slow
def test_no_mfu_without_a_known_peak_on_cpu(smoke_cfg):
    tokens = run_tokenizer(smoke_cfg, run_data(smoke_cfg))
    result = run_pretrain(smoke_cfg, tokens)
    tracking.configure(smoke_cfg.tracking)
    metrics = mlflow.MlflowClient().get_run(result.run_id).data.metrics
    assert metrics["train/tflops"] > 0 and "train/mfu" not in metrics


def _flops_per_token(result) -> float:
    from lm_tasks.models.io import load_pretrained

    return load_pretrained(Path(result.output_dir) / "model").flops_per_token()
