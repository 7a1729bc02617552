"""Score a fine-tuned task model on its evaluation split, beside the task's trivial baseline.

Reads the exported task model (`model/` of the fine-tuning stage: backbone, head,
task.json), rebuilds the task's adapter, predicts every evaluation example on the trainer's
device (`lm_tasks.training.device`), `eval.batch_size` examples at a time, and writes
    predictions.jsonl     one line per example: input, prediction, reference
    metrics.json          the task's metrics and the baseline's (and the device they ran on)
    confusion_matrix.png  (classification)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
from datasets import Dataset
from safetensors.torch import load_model
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from lm_tasks.artifacts import atomic_path, write_json
from lm_tasks.config import LifecycleConfig
from lm_tasks.models.base import CausalLM
from lm_tasks.models.io import load_pretrained
from lm_tasks.tasks.adapters import build_adapter
from lm_tasks.tasks.batching import to_device
from lm_tasks.tasks.data import load_task_data, scored_split
from lm_tasks.tokenizer import load_tokenizer
from lm_tasks.training.device import compute_device


def evaluate_task(cfg: LifecycleConfig, task_name: str, model_dir: str | Path, out_dir: str | Path,
                  fold: tuple[int, int] | None = None) -> dict:
    """The model's scores on the test split where one is configured, else on validation; or,
    with `fold=(i, k)`, on fold i of the train split, the one its cross-validation model did
    not train on."""
    task_cfg, model_dir, out_dir = cfg.finetune[task_name], Path(model_dir), Path(out_dir)
    if not (model_dir / "head.safetensors").is_file():
        raise FileNotFoundError(f"No fine-tuned {task_name} model at {model_dir}; run python -m flows.finetune "
                                f"task={task_name} first")
    saved = json.loads((model_dir / "task.json").read_text())
    device = compute_device(cfg.trainer.accelerator, cfg.trainer.devices)
    model = load_pretrained(model_dir, device=device)
    tokenizer = load_tokenizer(model_dir / "tokenizer.json")
    dataset, info = load_task_data(task_cfg, cfg.seed, fold)
    split = "held_out" if fold else scored_split(dataset)
    evaluated = dataset[split]
    if "label_names" in saved:
        info["label_names"] = saved["label_names"]  # the label ids the head was trained on
    adapter = build_adapter(task_cfg, info, model.config, tokenizer, cfg.tokenizer.sep_token, saved["max_length"])
    head = adapter.build_head(model)
    if list(head.state_dict()):
        load_model(head, str(model_dir / "head.safetensors"))
    head.to(device).eval()

    encoded, _ = adapter.encode(evaluated, tokenizer)
    predictions, references = predict_all(adapter, model, head, encoded, cfg.eval.batch_size, desc=task_name)
    result = {"task": task_name, "metrics": adapter.score(predictions, references),
              "baseline": adapter.baseline(dataset["train"], evaluated),
              "examples": len(predictions), "split": split, "source": info["source"], "device": str(model.device)}

    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "predictions.jsonl") as tmp:
        with open(tmp, "w") as f:
            for i, (prediction, reference) in enumerate(zip(predictions, references)):
                row = evaluated[prediction.get("example_id", i)]  # qa may skip examples
                f.write(json.dumps(adapter.record(row, prediction, reference), ensure_ascii=False) + "\n")
    if task_cfg.task == "classification":
        plot_confusion_matrix([p["label_id"] for p in predictions], references, adapter.label_names,
                              out_dir / "confusion_matrix.png")
    write_json(out_dir / "metrics.json", result)
    return result


@torch.no_grad()
def predict_all(adapter, model: CausalLM, head: nn.Module, encoded: Dataset, batch_size: int,
                desc: str = "") -> tuple[list, list]:
    """The adapter's final predictions and references for every encoded row, batch_size rows at a
    time on the model's device. The rows of a batch do not interact, so neither do the results
    and the batch size: the same predictions at every batch size."""
    loader = DataLoader(encoded, batch_size=batch_size, collate_fn=adapter.collate)
    predictions, references = [], []
    for batch in tqdm(loader, desc=f"evaluate {desc}", leave=False):
        predictions += adapter.predict(model, head, to_device(batch, model.device))
        references += adapter.references(batch)
    return adapter.finalize(predictions, references)


def plot_confusion_matrix(predicted: list[int], actual: list[int], names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(names)
    counts = [[0] * n for _ in range(n)]
    for p, a in zip(predicted, actual):
        counts[a][p] += 1
    fig, ax = plt.subplots(figsize=(1.2 * n + 2, 1.2 * n + 1.5))
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, counts[i][j], ha="center", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
