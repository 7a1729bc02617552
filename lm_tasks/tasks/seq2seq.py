"""Summarization and translation with a decoder-only model.

Each example becomes one sequence `source <sep> target <eos>`; the model learns to
continue after the separator, and the loss covers the target tokens (and the final
end-of-text) only. Predictions come from the model's one generation routine,
`CausalLM.generate` (greedy, or beam search with `num_beams > 1`), a batch of prompts at a
time (`CausalLM.decode_each`), each prompt's result the one it gets alone.

Length rule: the target keeps at most half of `max_length`; the source is cut from
its end to fit the rest. Truncated rows are counted and reported.
"""

from __future__ import annotations

import re

import torch
import torch.nn as nn
from datasets import Dataset
from tokenizers import Tokenizer

from lm_tasks.metrics import load_metric
from lm_tasks.models.base import CausalLM
from lm_tasks.tasks.batching import pad

IGNORE = -100
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class Seq2SeqAdapter:
    def __init__(self, task: str, max_length: int, sep_id: int, eos_id: int, pad_id: int,
                 num_beams: int, max_new_tokens: int, tokenizer: Tokenizer):
        self.task, self.max_length = task, max_length
        self.sep_id, self.eos_id, self.pad_id = sep_id, eos_id, pad_id
        self.num_beams, self.max_new_tokens, self.tokenizer = num_beams, max_new_tokens, tokenizer

    def build_head(self, model: CausalLM) -> nn.Module:
        return nn.Identity()  # the language-model head is the task head

    def encode(self, ds: Dataset, tokenizer: Tokenizer) -> tuple[Dataset, int]:
        sources = tokenizer.encode_batch(list(ds["source"]), add_special_tokens=False)
        targets = tokenizer.encode_batch(list(ds["target"]), add_special_tokens=False)
        rows, truncated = {"input_ids": [], "labels": [], "prompt_ids": [], "reference": []}, 0
        for source, target, text in zip(sources, targets, ds["target"]):
            target_ids = target.ids[: self.max_length // 2]
            source_ids = source.ids[: self.max_length - len(target_ids) - 2]  # room for <sep> and <eos>
            truncated += len(target_ids) < len(target.ids) or len(source_ids) < len(source.ids)
            sequence = source_ids + [self.sep_id] + target_ids + [self.eos_id]
            rows["input_ids"].append(sequence[:-1])
            # Position i predicts sequence[i + 1]; only target tokens and <eos> are scored.
            rows["labels"].append([IGNORE] * len(source_ids) + target_ids + [self.eos_id])
            rows["prompt_ids"].append(source_ids + [self.sep_id])
            rows["reference"].append(text)
        return Dataset.from_dict(rows), truncated

    def collate(self, rows: list[dict]) -> dict:
        idx = pad([r["input_ids"] for r in rows], self.pad_id)
        labels = pad([r["labels"] for r in rows], IGNORE)
        return {"idx": idx, "labels": labels, "prompts": [r["prompt_ids"] for r in rows],
                "references": [r["reference"] for r in rows]}

    def loss(self, model: CausalLM, head: nn.Module, batch: dict) -> torch.Tensor:
        return model(batch["idx"], batch["labels"])[1]

    def predict(self, model: CausalLM, head: nn.Module, batch: dict) -> list[dict]:
        """The batch's prompts decoded together (greedy or beam search), each as it decodes alone."""
        prompts = [prompt[-(model.config.block_size - 1):] for prompt in batch["prompts"]]
        generated = model.decode_each(prompts, self.max_new_tokens, eos_id=self.eos_id, num_beams=self.num_beams,
                                      batch_size=len(prompts))
        return [{"text": self.tokenizer.decode([t for t in new if t not in (self.eos_id, self.pad_id)]).strip()}
                for new in generated]

    def references(self, batch: dict) -> list[str]:
        return batch["references"]

    def score(self, predictions: list[dict], references: list[str]) -> dict:
        metric = load_metric("rouge" if self.task == "summarization" else "sacrebleu")
        result = metric.compute(predictions=[p["text"] for p in predictions], references=[[r] for r in references])
        return {k: v for k, v in result.items() if isinstance(v, float)}

    def baseline(self, train: Dataset, validation: Dataset) -> dict:
        """Summarization: the lead (first) sentence. Translation: the source copied."""
        sources = list(validation["source"])
        if self.task == "summarization":
            guesses = [_SENTENCE_END.split(s.strip(), maxsplit=1)[0] for s in sources]
        else:
            guesses = sources
        return self.score([{"text": g} for g in guesses], list(validation["target"]))

    def finalize(self, predictions: list, references: list) -> tuple[list, list]:
        return predictions, references  # one prediction per example already

    def describe(self) -> dict:
        return {"task": self.task, "sep_id": self.sep_id, "num_beams": self.num_beams,
                "max_new_tokens": self.max_new_tokens, "max_length": self.max_length}

    def record(self, row: dict, prediction: dict, reference: str) -> dict:
        return {"source": row["source"], "prediction": prediction["text"], "reference": reference}
