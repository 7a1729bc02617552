"""Summarization and translation with a decoder-only model.

Each example becomes one sequence `source <sep> target <eos>`; the model learns to
continue after the separator, and the loss covers the target tokens (and the final
end-of-text) only. Predictions come from the model's one generation routine,
`CausalLM.generate` (greedy, or beam search with `num_beams > 1`), a batch of prompts at a
time (`CausalLM.decode_each`), each prompt's result the one it gets alone.

Length rule: the target keeps at most half of `max_length`; the source is cut from
its end to fit the rest. Truncated rows are counted and reported.

Extractive summaries (`finetune.summarization.extractive`): instead of generating, the
model scores each sentence of the source as the summary after the separator (its mean
cross-entropy per token, the end-of-text included) and the summary is the sentence it finds
most likely. The fine-tuned model still decides what a summary is; the output is then
always fluent text from the document, which a small model's generations often are not.
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
                 num_beams: int, max_new_tokens: int, tokenizer: Tokenizer, extractive: bool = False):
        self.task, self.max_length = task, max_length
        self.sep_id, self.eos_id, self.pad_id = sep_id, eos_id, pad_id
        self.num_beams, self.max_new_tokens, self.tokenizer = num_beams, max_new_tokens, tokenizer
        self.extractive = extractive

    def build_head(self, model: CausalLM) -> nn.Module:
        return nn.Identity()  # the language-model head is the task head

    def encode(self, ds: Dataset, tokenizer: Tokenizer) -> tuple[Dataset, int]:
        sources = tokenizer.encode_batch(list(ds["source"]), add_special_tokens=False)
        targets = tokenizer.encode_batch(list(ds["target"]), add_special_tokens=False)
        rows, truncated = {"input_ids": [], "labels": [], "prompt_ids": [], "reference": []}, 0
        for source, target, text in zip(sources, targets, ds["target"]):
            source_ids, target_ids, input_ids, labels = self._example(source.ids, target.ids)
            truncated += len(target_ids) < len(target.ids) or len(source_ids) < len(source.ids)
            rows["input_ids"].append(input_ids)
            rows["labels"].append(labels)
            rows["prompt_ids"].append(source_ids + [self.sep_id])
            rows["reference"].append(text)
        if self.extractive:
            rows["source"] = list(ds["source"])
        return Dataset.from_dict(rows), truncated

    def _example(self, source: list[int], target: list[int]):
        """The length rule and the training sequence: (source kept, target kept, input ids, labels)."""
        target = target[: self.max_length // 2]
        source = source[: self.max_length - len(target) - 2]  # room for <sep> and <eos>
        sequence = source + [self.sep_id] + target + [self.eos_id]
        # Position i predicts sequence[i + 1]; only target tokens and <eos> are scored.
        return source, target, sequence[:-1], [IGNORE] * len(source) + target + [self.eos_id]

    def collate(self, rows: list[dict]) -> dict:
        idx = pad([r["input_ids"] for r in rows], self.pad_id)
        labels = pad([r["labels"] for r in rows], IGNORE)
        batch = {"idx": idx, "labels": labels, "prompts": [r["prompt_ids"] for r in rows],
                 "references": [r["reference"] for r in rows]}
        if self.extractive:
            batch["sources"] = [r["source"] for r in rows]
        return batch

    def loss(self, model: CausalLM, head: nn.Module, batch: dict) -> torch.Tensor:
        return model(batch["idx"], batch["labels"])[1]

    def predict(self, model: CausalLM, head: nn.Module, batch: dict) -> list[dict]:
        """The batch's prompts decoded together (greedy or beam search), each as it decodes alone;
        or, extractive, each source's sentence the model finds most likely as its summary."""
        if self.extractive:
            return [{"text": self.extract(model, source)} for source in batch["sources"]]
        prompts = [prompt[-(model.config.block_size - 1):] for prompt in batch["prompts"]]
        generated = model.decode_each(prompts, self.max_new_tokens, eos_id=self.eos_id, num_beams=self.num_beams,
                                      batch_size=len(prompts))
        return [{"text": self.tokenizer.decode([t for t in new if t not in (self.eos_id, self.pad_id)]).strip()}
                for new in generated]

    @torch.no_grad()
    def extract(self, model: CausalLM, source: str, chunk: int = 16) -> str:
        """The sentence of `source` with the lowest mean cross-entropy as the continuation of
        `source <sep>`, each scored as the model was trained: source cut to fit, then <eos>."""
        sentences = [part for part in _SENTENCE_END.split(source.strip()) if part] or [source]
        source_ids = self.tokenizer.encode(source, add_special_tokens=False).ids
        inputs, labels = [], []
        for encoded in self.tokenizer.encode_batch(sentences, add_special_tokens=False):
            *_, input_ids, candidate_labels = self._example(source_ids, encoded.ids)
            inputs.append(input_ids)
            labels.append(candidate_labels)
        scores = []
        for start in range(0, len(inputs), chunk):
            targets = pad(labels[start:start + chunk], IGNORE).to(model.device)
            losses = model.token_losses(pad(inputs[start:start + chunk], self.pad_id).to(model.device), targets)
            scores += (losses.sum(1) / (targets != IGNORE).sum(1)).tolist()
        return sentences[min(range(len(scores)), key=scores.__getitem__)]

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
                "max_new_tokens": self.max_new_tokens, "max_length": self.max_length, "extractive": self.extractive}

    def record(self, row: dict, prediction: dict, reference: str) -> dict:
        return {"source": row["source"], "prediction": prediction["text"], "reference": reference}
