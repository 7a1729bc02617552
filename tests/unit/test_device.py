"""Evaluation and generation run on the trainer's device (`lm_tasks.training.device`)."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from lm_tasks.config import ConfigError, load_config
from lm_tasks.models.gpt import GPT, GPTConfig
from lm_tasks.tasks.classification import ClassificationAdapter
from lm_tasks.tasks.embedded import sentiment
from lm_tasks.tasks.evaluate import evaluate_task
from lm_tasks.tokenizer import special_token_ids, train_tokenizer
from lm_tasks.training.device import compute_device
from lm_tasks.training.finetune import FinetuneModule, save_task_model

CUDA, MPS = torch.cuda.is_available(), torch.backends.mps.is_available()


def test_cpu_and_auto_map_to_a_device_this_machine_has():
    assert compute_device("cpu") == torch.device("cpu")
    assert compute_device("cpu", devices=4) == torch.device("cpu")  # CPU processes share the one device
    expected = torch.device("cuda", 0) if CUDA else torch.device("mps") if MPS else torch.device("cpu")
    assert compute_device("auto", devices="auto") == expected


@pytest.mark.parametrize("accelerator", ["cuda", "gpu"])
@pytest.mark.parametrize("devices, index", [(1, 0), (-1, 0), ("auto", 0), ([1, 0], 1), ("1,", 1)])
def test_cuda_is_the_first_device_lightning_would_use(accelerator, devices, index):
    if MPS and accelerator == "gpu":
        assert compute_device(accelerator, devices) == torch.device("mps")
    elif not CUDA:
        with pytest.raises(ConfigError, match="CUDA, which is not available on this machine"):
            compute_device(accelerator, devices)
    elif index >= torch.cuda.device_count():
        with pytest.raises(ConfigError, match=f"names CUDA device {index}"):
            compute_device(accelerator, devices)
    else:
        assert compute_device(accelerator, devices) == torch.device("cuda", index)


def test_mps_and_unknown_accelerators():
    if MPS:
        assert compute_device("mps") == torch.device("mps")
    else:
        with pytest.raises(ConfigError, match="MPS is not available"):
            compute_device("mps")
    with pytest.raises(ConfigError, match="trainer.accelerator='tpu'"):
        compute_device("tpu")


@pytest.fixture
def task_model(tmp_path):
    """A randomly initialised classification model, exported as the fine-tuning stage exports one."""
    cfg = load_config([f"paths.root_dir={tmp_path}", "finetune=classification", "tokenizer.vocab_size=300",
                       "finetune.classification.data.max_rows=30"])
    texts = Dataset.from_dict({"text": list(sentiment(200, 1)["train"]["text"])})
    tokenizer = train_tokenizer(texts, cfg.tokenizer, tmp_path / "tokenizer.json")
    ids = special_token_ids(tokenizer, cfg.tokenizer)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=ids.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16,
                          eos_id=ids.eos_id, pad_id=ids.pad_id))
    adapter = ClassificationAdapter(["negative", "positive"], "last", 32, ids.pad_id)
    module = FinetuneModule(model, adapter, cfg.finetune["classification"])
    save_task_model(module, adapter, tmp_path / "model", tmp_path / "tokenizer.json")
    return tmp_path, tmp_path / "model"


@pytest.mark.parametrize("accelerator", ["cpu", "auto", "cuda"])
def test_the_evaluated_model_sits_on_the_trainer_device(task_model, accelerator):
    root, model_dir = task_model
    cfg = load_config([f"paths.root_dir={root}", "finetune=classification", f"trainer.accelerator={accelerator}",
                       "finetune.classification.data.max_rows=30"])
    if accelerator == "cuda" and not CUDA:  # no silent fallback to the CPU
        with pytest.raises(ConfigError, match="CUDA"):
            evaluate_task(cfg, "classification", model_dir, root / "eval")
        return
    result = evaluate_task(cfg, "classification", model_dir, root / "eval")
    assert result["device"] == str(compute_device(accelerator)) and result["examples"] == 30
