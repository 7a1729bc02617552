"""What every language-model family shares: the one generation routine.

A family (the GPT, the recurrent models, the n-gram model) subclasses `CausalLM` and
provides:

    forward(idx, targets=None) -> (logits (B, T, V), mean cross-entropy or None)
    new_cache()                -> the decoding state generation carries between tokens
                                  (keys/values, recurrent state, or None)
    _next_logits(idx, cache, first) -> (B, V) logits for the token after idx

and, where fine-tuning heads can read it, `hidden_states(idx) -> (B, T, hidden_size)`.
`generate()` then samples (temperature, top-k, top-p), decodes greedily (temperature 0)
or runs beam search (num_beams > 1) the same way for every family.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn as nn
import torch.nn.functional as F


class CausalLM(nn.Module):
    """Base class of the language models: generation, optimizer groups, sizes."""

    config: object  # the family's config dataclass (vocab_size, block_size, eos_id, pad_id, ...)
    # Whether the model has hidden states and gradients: what fine-tuning and Lightning need.
    trainable = True

    @property
    def device(self) -> torch.device:
        return next(itertools.chain(self.parameters(), self.buffers())).device

    @property
    def hidden_size(self) -> int:
        """Width of `hidden_states()`: what a task head reads."""
        raise NotImplementedError(f"{type(self).__name__} has no hidden states for a task head")

    def num_parameters(self, exclude_embeddings: bool = True) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> float:
        """Training FLOPs per token (forward and backward): 6 per parameter, each used once per token."""
        return 6.0 * self.num_parameters()

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        """Decay matrices (linear, recurrent and embedding weights); never biases or norm gains."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    def new_cache(self):
        return None

    def _next_logits(self, idx: torch.Tensor, cache, first: bool) -> torch.Tensor:
        raise NotImplementedError

    @torch.inference_mode()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None,
                 generator: torch.Generator | None = None, num_beams: int = 1,
                 use_cache: bool = True) -> torch.Tensor:
        """Continue idx (B, T) by up to max_new_tokens; returns (B, T + new).

        temperature 0 is greedy; num_beams > 1 is beam search (one prompt at a time).
        Rows that produced eos_id are padded with it; decoding stops when all have.
        """
        if num_beams > 1:
            if idx.size(0) != 1:
                raise ValueError("Beam search decodes one prompt at a time (idx of shape (1, T))")
            return self.beam_search(idx, max_new_tokens, num_beams, eos_id)
        was_training = self.training
        self.eval()
        cache = self.new_cache() if use_cache else None
        finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        for step in range(max_new_tokens):
            logits = self._next_logits(idx, cache, first=step == 0)  # (B, V)
            if temperature == 0:
                next_id = logits.argmax(dim=-1, keepdim=True)
            else:
                probs = F.softmax(filter_logits(logits / temperature, top_k, top_p), dim=-1)
                next_id = torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)
            if eos_id is not None:
                next_id = torch.where(finished.unsqueeze(1), torch.full_like(next_id, eos_id), next_id)
                finished |= next_id.squeeze(1) == eos_id
            idx = torch.cat([idx, next_id], dim=1)
            if eos_id is not None and bool(finished.all()):
                break
        self.train(was_training)
        return idx

    @torch.inference_mode()
    def beam_search(self, idx: torch.Tensor, max_new_tokens: int, num_beams: int,
                    eos_id: int | None = None, length_penalty: float = 1.0) -> torch.Tensor:
        """The most probable continuation of idx (1, T) found with num_beams beams.

        Hypotheses are ranked by total log-probability / (new tokens ** length_penalty).
        """
        was_training = self.training
        self.eval()
        cache = self.new_cache()
        beams, scores = idx, torch.zeros(1, device=idx.device)  # (n, T), (n,)
        done: list[tuple[float, torch.Tensor]] = []

        def ranked(score: float, length: int) -> float:
            return score / (length ** length_penalty)

        for step in range(max_new_tokens):
            log_probs = F.log_softmax(self._next_logits(beams, cache, first=step == 0).float(), dim=-1)
            candidates = (scores.unsqueeze(1) + log_probs).view(-1)  # (n * V,)
            top_scores, top_ids = candidates.topk(min(2 * num_beams, candidates.numel()))
            keep_rows, keep_tokens, keep_scores = [], [], []
            for score, flat in zip(top_scores.tolist(), top_ids.tolist()):
                row, token = divmod(flat, log_probs.size(-1))
                if token == eos_id:
                    done.append((ranked(score, step + 1), torch.cat([beams[row], beams.new_tensor([token])])))
                else:
                    keep_rows.append(row), keep_tokens.append(token), keep_scores.append(score)
                if len(keep_rows) == num_beams:
                    break
            if not keep_rows:
                break
            rows = torch.tensor(keep_rows, device=idx.device)
            if cache is not None:
                cache.reorder(rows)
            beams = torch.cat([beams[rows], torch.tensor(keep_tokens, device=idx.device).unsqueeze(1)], dim=1)
            scores = torch.tensor(keep_scores, device=idx.device)
            if len(done) >= num_beams:
                break
        new_tokens = beams.size(1) - idx.size(1)
        if new_tokens or not done:  # the beams still open compete with the finished ones
            done += [(ranked(s, max(new_tokens, 1)), b) for s, b in zip(scores.tolist(), beams)]
        self.train(was_training)
        return max(done, key=lambda pair: pair[0])[1].unsqueeze(0)


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Keep the top-k logits and the smallest set whose probability reaches top_p."""
    if top_k is not None and 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = F.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        drop = cumulative - F.softmax(sorted_logits, dim=-1) > top_p  # keep the token crossing top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits
