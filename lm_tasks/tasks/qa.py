"""Extractive question answering (SQuAD style) on the pretrained Transformer.

Input per window: `question <sep> context-window`. The question comes first, so in a
causal model every context token has read it. A linear head gives each position a
start and an end logit; spans may only lie inside the context, and the separator
position stands for "no answer in this window".

Contexts longer than the window are split into windows that overlap by `stride`
tokens. The tokenizer's offset mapping ties every context token to its characters,
so a predicted token span maps back to an exact character span of the context.
Post-processing takes the `n_best` start and end positions of every window, keeps the
valid spans of at most `max_answer_tokens`, and answers with the best span over all
windows, or "" (unanswerable) when every window prefers its no-answer position and
`allow_no_answer` is on (for data like SQuAD v1.1, where every question has an answer,
turn it off: the best span is then always given).

Answers whose text is not found at `answer_start` in the context are dropped and
counted; an example left without answers that had some is skipped (counted too).
"""

from __future__ import annotations

import re
from collections import defaultdict

import torch
import torch.nn as nn
import torch.nn.functional as F
from datasets import Dataset
from tokenizers import Tokenizer

from lm_tasks.metrics import load_metric
from lm_tasks.models.base import CausalLM
from lm_tasks.tasks.batching import pad


class QAAdapter:
    task = "qa"

    def __init__(self, max_length: int, stride: int, max_answer_tokens: int, n_best: int, sep_id: int,
                 pad_id: int, allow_no_answer: bool = True):
        self.max_length, self.stride, self.allow_no_answer = max_length, stride, allow_no_answer
        self.max_answer_tokens, self.n_best = max_answer_tokens, n_best
        self.sep_id, self.pad_id = sep_id, pad_id
        self.skipped = {"answers_not_in_context": 0, "examples_without_valid_answer": 0}

    def build_head(self, model: CausalLM) -> nn.Module:
        return nn.Linear(model.hidden_size, 2)

    # --- features -----------------------------------------------------------------

    def encode(self, ds: Dataset, tokenizer: Tokenizer) -> tuple[Dataset, int]:
        """One feature per window; returns the features and how many examples needed several."""
        features = defaultdict(list)
        split_examples = 0
        questions = tokenizer.encode_batch(list(ds["question"]), add_special_tokens=False)
        contexts = tokenizer.encode_batch(list(ds["context"]), add_special_tokens=False)
        for example_id, (row, question, context) in enumerate(zip(ds, questions, contexts)):
            answers = self._valid_answers(row)
            if answers is None:
                continue
            q_ids = question.ids[: self.max_length // 2]
            room = self.max_length - len(q_ids) - 1
            windows = token_windows(len(context.ids), room, self.stride)
            split_examples += len(windows) > 1
            for start, end in windows:
                offsets = context.offsets[start:end]
                span = char_span_to_tokens(offsets, answers[0]) if answers else None
                base = len(q_ids) + 1  # position of the first context token
                features["input_ids"].append(q_ids + [self.sep_id] + context.ids[start:end])
                features["example_id"].append(example_id)
                features["context_start"].append(base)
                features["offsets"].append([list(o) for o in offsets])
                features["start"].append(base + span[0] if span else len(q_ids))
                features["end"].append(base + span[1] if span else len(q_ids))
                features["context"].append(row["context"])
                features["answers"].append([row["context"][s:e] for s, e in answers])
        return Dataset.from_dict(dict(features)), split_examples

    def _valid_answers(self, row: dict) -> list[tuple[int, int]] | None:
        """Gold answers as character spans; None when the example must be skipped."""
        texts, starts = row["answers"]["text"], row["answers"]["answer_start"]
        spans = [(s, s + len(t)) for t, s in zip(texts, starts) if row["context"][s:s + len(t)] == t and t]
        self.skipped["answers_not_in_context"] += len(texts) - len(spans)
        if texts and not spans:
            self.skipped["examples_without_valid_answer"] += 1
            return None
        return spans

    def collate(self, rows: list[dict]) -> dict:
        lengths = torch.tensor([len(r["input_ids"]) for r in rows])
        idx = pad([r["input_ids"] for r in rows], self.pad_id)
        return {"idx": idx, "lengths": lengths, "context_start": torch.tensor([r["context_start"] for r in rows]),
                "start": torch.tensor([r["start"] for r in rows]), "end": torch.tensor([r["end"] for r in rows]),
                "rows": rows}

    # --- model --------------------------------------------------------------------

    def logits(self, model: CausalLM, head: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Start and end logits (B, T); positions outside the context, except the separator, masked."""
        start, end = head(model.hidden_states(batch["idx"])).float().unbind(-1)
        positions = torch.arange(batch["idx"].size(1), device=batch["idx"].device)[None, :]
        context = (positions >= batch["context_start"][:, None]) & (positions < batch["lengths"][:, None])
        allowed = context | (positions == batch["context_start"][:, None] - 1)  # the separator: no answer
        return start.masked_fill(~allowed, -1e9), end.masked_fill(~allowed, -1e9)

    def loss(self, model: CausalLM, head: nn.Module, batch: dict) -> torch.Tensor:
        start, end = self.logits(model, head, batch)
        return (F.cross_entropy(start, batch["start"]) + F.cross_entropy(end, batch["end"])) / 2

    def predict(self, model: CausalLM, head: nn.Module, batch: dict) -> list[dict]:
        """Per window: the n-best valid spans (score, char start, char end) and the no-answer score."""
        starts, ends = self.logits(model, head, batch)
        out = []
        for i, row in enumerate(batch["rows"]):
            s, e, base = starts[i], ends[i], row["context_start"]
            null = float(s[base - 1] + e[base - 1])
            top_s = s.topk(min(self.n_best, s.numel())).indices.tolist()
            top_e = e.topk(min(self.n_best, e.numel())).indices.tolist()
            spans = []
            for a in top_s:
                for b in top_e:
                    if base <= a <= b < base + len(row["offsets"]) and b - a + 1 <= self.max_answer_tokens:
                        spans.append((float(s[a] + e[b]), row["offsets"][a - base][0], row["offsets"][b - base][1]))
            spans.sort(reverse=True)
            out.append({"example_id": row["example_id"], "spans": spans[: self.n_best], "null": null,
                        "context": row["context"]})
        return out

    def references(self, batch: dict) -> list[dict]:
        return [{"example_id": r["example_id"], "answers": r["answers"]} for r in batch["rows"]]

    def finalize(self, predictions: list[dict], references: list[dict]) -> tuple[list[dict], list[list[str]]]:
        """Windows -> one answer per example: the best span over its windows, or "" if none beats no-answer."""
        by_example: dict[int, list[dict]] = defaultdict(list)
        answers: dict[int, list[str]] = {}
        for prediction, reference in zip(predictions, references):
            by_example[prediction["example_id"]].append(prediction)
            answers[reference["example_id"]] = reference["answers"]
        final, golds = [], []
        for example_id, windows in by_example.items():
            spans = [span for w in windows for span in w["spans"]]
            best = max(spans, default=None)
            null = min(w["null"] for w in windows)
            no_answer = best is None or (self.allow_no_answer and null > best[0])
            text = "" if no_answer else windows[0]["context"][best[1]:best[2]].strip()
            final.append({"example_id": example_id, "text": text})
            golds.append(answers[example_id])
        return final, golds

    def score(self, predictions: list[dict], references: list[list[str]]) -> dict:
        return load_metric("squad").compute(predictions=[p["text"] for p in predictions], references=references)

    def baseline(self, train: Dataset, validation: Dataset) -> dict:
        """A sliding window with no learning: the k-word span whose neighbourhood shares the
        most words with the question (k the mean gold answer length in words on train)."""
        lengths = [len(t.split()) for a in train["answers"] for t in a["text"][:1]]
        k = max(1, round(sum(lengths) / max(len(lengths), 1)))
        guesses = [{"text": sliding_window_answer(c, q, k)} for c, q in zip(validation["context"], validation["question"])]
        return self.score(guesses, [list(a["text"]) for a in validation["answers"]])

    def describe(self) -> dict:
        return {"task": self.task, "max_length": self.max_length, "stride": self.stride,
                "max_answer_tokens": self.max_answer_tokens, "n_best": self.n_best, "sep_id": self.sep_id,
                "allow_no_answer": self.allow_no_answer}

    def record(self, row: dict, prediction: dict, reference: list[str]) -> dict:
        return {"question": row["question"], "prediction": prediction["text"], "answers": reference}


_WORD = re.compile(r"\w+")
# Question words that say nothing about where the answer is.
_STOPWORDS = frozenset(
    "a an and are as at be by did do does for from had has have how in is it its of on or that the their "
    "this to was were what when where which who whom whose why with".split())


def sliding_window_answer(context: str, question: str, k: int) -> str:
    """The k-word span of the context closest to the question's words (stopwords aside): each
    question word seen within `radius` words of the span adds 1 - distance / (radius + 1), each
    one inside the span takes 1 away (an answer seldom repeats its question); the first such
    span on ties. radius: the question's length in words, at least 5."""
    words = context.split()
    if len(words) <= k:
        return " ".join(words)
    asked = {t for t in _WORD.findall(question.lower()) if t not in _STOPWORDS}
    seen: dict[str, list[int]] = {}
    for position, word in enumerate(words):
        for token in set(_WORD.findall(word.lower())) & asked:
            seen.setdefault(token, []).append(position)
    radius = max(5, len(question.split()))
    best, best_score = 0, None
    for start in range(len(words) - k + 1):
        end, score = start + k, 0.0
        for positions in seen.values():
            if any(start <= p < end for p in positions):
                score -= 1
                continue
            distance = min(start - p if p < start else p - end + 1 for p in positions)
            if distance <= radius:
                score += 1 - distance / (radius + 1)
        if best_score is None or score > best_score:
            best, best_score = start, score
    return " ".join(words[best:best + k])


def token_windows(n_tokens: int, room: int, stride: int) -> list[tuple[int, int]]:
    """[start, end) token windows of at most `room` tokens, consecutive ones overlapping by `stride`."""
    if room <= stride:
        raise ValueError(f"The context window ({room} tokens) must be longer than the stride ({stride})")
    windows, start = [], 0
    while True:
        end = min(start + room, n_tokens)
        windows.append((start, end))
        if end >= n_tokens:
            return windows
        start = end - stride


def char_span_to_tokens(offsets: list, span: tuple[int, int]) -> tuple[int, int] | None:
    """The first and last token (indices into `offsets`) covering the character span, or None
    when the span is not wholly inside these tokens."""
    first = next((i for i, (s, e) in enumerate(offsets) if e > span[0]), None)
    last = next((i for i in range(len(offsets) - 1, -1, -1) if offsets[i][0] < span[1]), None)
    if first is None or last is None or first > last:
        return None
    if offsets[first][0] > span[0] or offsets[last][1] < span[1]:
        return None  # the span starts before or ends after this window
    return first, last
