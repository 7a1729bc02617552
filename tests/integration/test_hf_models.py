"""Hugging Face models in the lifecycle: a GPT-2 checkpoint fine-tuned through `init_from`,
every trained model GPT-2 can express exported so `transformers` loads it, and the others
(model=modern) kept in our format only, the reason logged."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from lm_tasks.config import load_config
from lm_tasks.models.io import load_pretrained
from lm_tasks.stages import run_data, run_finetune, run_pretrain, run_tokenizer
from tests.unit.test_hf_interop import hf_gpt2, save_hf_checkpoint, train_bpe

transformers = pytest.importorskip("transformers")

TASK = ["finetune=classification", "finetune.classification.max_steps=6", "finetune.classification.batch_size=8",
        "finetune.classification.val_check_interval=3", "finetune.classification.data.max_rows=64"]


def test_fine_tune_a_gpt2_checkpoint_through_init_from(tmp_path, smoke_overrides):
    tok = train_bpe(["<|endoftext|>"])
    checkpoint = save_hf_checkpoint(hf_gpt2(tok), tok, tmp_path / "gpt2-tiny")
    cfg = load_config(smoke_overrides + TASK + [f"init_from={checkpoint}"])
    tuned = run_finetune(cfg, "classification")
    assert tuned.metrics["finetune/classification/best_val_accuracy"] > 0
    backbone = load_pretrained(Path(tuned.output_dir) / "model")
    assert backbone.config.activation == "gelu_tanh" and backbone.config.n_embd == 32  # GPT-2's, converted

    # The fine-tuned backbone is exported too, and transformers loads it.
    exported = transformers.AutoModelForCausalLM.from_pretrained(Path(tuned.output_dir) / "hf").eval()
    idx = torch.randint(0, backbone.config.vocab_size, (1, 12))
    assert torch.allclose(exported(idx).logits, backbone(idx)[0], atol=1e-4)


def test_the_pretrained_model_is_exported_for_transformers(smoke_cfg):
    pretrained = run_pretrain(smoke_cfg, run_tokenizer(smoke_cfg, run_data(smoke_cfg)))
    ours = load_pretrained(Path(pretrained.output_dir) / "model")
    hf_dir = Path(pretrained.output_dir) / "hf"
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    ids = tokenizer("def main():\n    return 1")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(model(torch.tensor([ids])).logits, ours(torch.tensor([ids]))[0], atol=1e-4)
    assert tokenizer.eos_token_id == ours.config.eos_id


def test_a_model_gpt2_cannot_express_skips_the_export_and_says_why(smoke_overrides, caplog):
    cfg = load_config(smoke_overrides + ["model=modern"] + TASK)
    with caplog.at_level(logging.INFO, logger="lm_tasks.models.hf"):
        pretrained = run_pretrain(cfg, run_tokenizer(cfg, run_data(cfg)))
        tuned = run_finetune(cfg, "classification", pretrained)
    assert "pos_encoding=rotary and norm=rmsnorm and activation=swiglu and qk_norm=true have no GPT-2" in caplog.text
    for stage in (pretrained, tuned):
        assert not (Path(stage.output_dir) / "hf").exists() and (Path(stage.output_dir) / "model").is_dir()
    assert tuned.metrics["finetune/classification/best_val_accuracy"] > 0
    model = load_pretrained(Path(pretrained.output_dir) / "model")
    assert (model.config.pos_encoding, model.config.norm, model.config.activation, model.config.qk_norm) == (
        "rotary", "rmsnorm", "swiglu", True)
    assert model.generate(torch.tensor([[1, 2, 3]]), 5, temperature=0).shape == (1, 8)
