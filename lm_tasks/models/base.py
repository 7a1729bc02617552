"""What every language-model family shares: the one generation routine.

A family (the GPT, the recurrent models, the n-gram model) subclasses `CausalLM` and
provides:

    forward(idx, targets=None) -> (logits (B, T, V), mean cross-entropy or None)
    token_losses(idx, targets) -> (B, T) cross-entropy per token (a default from forward's logits)
    new_cache()                -> the decoding state generation carries between tokens
                                  (keys/values, recurrent state, or None)
    _next_logits(idx, cache, first) -> (B, V) logits for the token after idx

and, where fine-tuning heads can read it, `hidden_states(idx) -> (B, T, hidden_size)`.
`generate()` then samples (temperature, top-k, top-p), decodes greedily (temperature 0)
or runs beam search (num_beams > 1) the same way for every family, on a batch of prompts
(`decode_each` takes prompts of any lengths).
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

    def optimizer_groups(self, weight_decay: float, layer_lr_decay: float = 1.0) -> list[dict]:
        """Decay matrices (linear, recurrent and embedding weights); never biases or norm gains.

        With layer_lr_decay < 1 (layer-wise learning-rate decay, for fine-tuning) each group also
        carries an `lr_scale`: 1 above the layers, layer_lr_decay ** k for the k-th layer from the
        top, the embeddings one step below the first layer; `build_optimizer` applies it.
        """
        groups: dict[tuple[float, bool], dict] = {}
        for name, p in self.named_parameters():  # a tied weight once, under its first name
            if not p.requires_grad:
                continue
            scale = layer_lr_decay ** (self.config.n_layer + 1 - self.layer_of(name)) if layer_lr_decay != 1 else 1.0
            decays = p.dim() >= 2
            group = groups.setdefault((scale, decays), {"params": [], "weight_decay": weight_decay if decays else 0.0})
            if layer_lr_decay != 1:
                group["lr_scale"] = scale
            group["params"].append(p)
        return sorted(groups.values(), key=lambda g: (-g.get("lr_scale", 1.0), g["weight_decay"] == 0.0))

    def layer_of(self, name: str) -> int:
        """The depth of a parameter by its name: 0 the embeddings, 1 to n_layer the layers,
        n_layer + 1 what sits above them (final norm, output head)."""
        raise NotImplementedError(f"{type(self).__name__} does not say which layer its parameters belong to")

    def set_dropout(self, p: float) -> None:
        """Every dropout rate of the model to p: fine-tuning on a small task may regularise a
        model that was pretrained without dropout (finetune.<task>.dropout)."""
        self.config.dropout = p
        for module in self.modules():
            if isinstance(module, nn.Dropout):
                module.p = p
            elif isinstance(module, nn.RNNBase) and module.num_layers > 1:
                module.dropout = p

    def hidden_matrices(self) -> list[torch.Tensor]:
        """The weights of the linear maps inside the network: what Muon optimises (optim.name=muon).
        Embedding tables and any output head tied to one are not hidden matrices."""
        embeddings = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        return [m.weight for m in self.modules()
                if isinstance(m, nn.Linear) and m.weight.requires_grad and id(m.weight) not in embeddings]

    def token_losses(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy (nats) of every target token: (B, T), 0 where the target is ignored (-100).
        Evaluation sums these itself, so its totals do not depend on how tokens are batched."""
        logits, _ = self(idx)  # (B, T, V)
        return F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=-100, reduction="none")

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

        temperature 0 is greedy; num_beams > 1 is beam search, each row searched on its own.
        Rows that produced eos_id are padded with it; decoding stops when all have.
        """
        if num_beams > 1:
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
        """The most probable continuation of each row of idx (B, T), num_beams beams per row:
        (B, T + new), rows whose best hypothesis is shorter padded with eos_id."""
        best = self.best_hypotheses(idx, max_new_tokens, num_beams, eos_id, length_penalty)
        # Without eos_id every hypothesis has max_new_tokens new tokens, so padding happens only with one.
        return torch.nn.utils.rnn.pad_sequence(best, batch_first=True, padding_value=0 if eos_id is None else eos_id)

    @torch.inference_mode()
    def best_hypotheses(self, idx: torch.Tensor, max_new_tokens: int, num_beams: int,
                        eos_id: int | None = None, length_penalty: float = 1.0) -> list[torch.Tensor]:
        """Beam search: each row of idx (B, T) with its most probable continuation, unpadded
        (a search that ends early can keep an open hypothesis that did not reach eos_id).

        Hypotheses are ranked by total log-probability / (new tokens ** length_penalty). The
        rows are searched side by side but apart: each gets the result it gets alone.
        """
        was_training = self.training
        self.eval()
        K, T = num_beams, idx.size(1)
        cache = self.new_cache()
        # The open beams of the prompts still searching, `width` rows per prompt (1 before the
        # first token, then K; an empty slot has score -inf and is never extended).
        beams, scores = idx, torch.zeros(idx.size(0), 1, device=idx.device)  # (n * width, T + step), (n, width)
        searching = list(range(idx.size(0)))  # the prompts in `beams`, in order
        done: list[list[tuple[float, torch.Tensor]]] = [[] for _ in searching]  # per prompt: (rank, hypothesis)
        best: list[torch.Tensor | None] = [None] * idx.size(0)

        def ranked(score: float, length: int) -> float:
            return score / (length ** length_penalty)

        def close(prompt: int, open_beams: torch.Tensor, open_scores: list[float]) -> None:
            new_tokens = open_beams.size(1) - T
            if new_tokens or not done[prompt]:  # the beams still open compete with the finished ones
                done[prompt] += [(ranked(s, max(new_tokens, 1)), b) for s, b in zip(open_scores, open_beams)
                                 if s != float("-inf")]
            best[prompt] = max(done[prompt], key=lambda pair: pair[0])[1]

        for step in range(max_new_tokens):
            log_probs = F.log_softmax(self._next_logits(beams, cache, first=step == 0).float(), dim=-1)
            n, width, V = scores.size(0), scores.size(1), log_probs.size(-1)
            candidates = (scores.unsqueeze(-1) + log_probs.view(n, width, V)).view(n, width * V)
            top_scores, top_ids = candidates.topk(min(2 * K, width * V), dim=-1)  # (n, 2K) each
            rows, tokens, kept_scores, still = [], [], [], []
            for i, prompt in enumerate(searching):
                first = i * width  # the prompt's first row in beams
                keep, ended = _walk_candidates(top_scores[i].tolist(), top_ids[i].tolist(), V, K, eos_id)
                done[prompt] += [(ranked(score, step + 1), torch.cat([beams[first + beam], beams.new_tensor([eos_id])]))
                                 for beam, score in ended]
                if not keep:  # every continuation kept ended: the open beams compete as they are
                    close(prompt, beams[first:first + width], scores[i].tolist())
                    continue
                keep += [(keep[0][0], keep[0][1], float("-inf"))] * (K - len(keep))  # empty slots: K rows each
                chosen = [first + beam for beam, _, _ in keep]
                if len(done[prompt]) >= K:  # enough have ended: the grown beams compete with them
                    grown = torch.cat([beams[chosen], beams.new_tensor([[token] for _, token, _ in keep])], dim=1)
                    close(prompt, grown, [score for _, _, score in keep])
                    continue
                still.append(prompt)
                rows += chosen
                tokens += [token for _, token, _ in keep]
                kept_scores += [score for _, _, score in keep]
            searching = still
            if not searching:
                break
            rows = torch.tensor(rows, device=idx.device)
            if cache is not None:
                cache.reorder(rows)
            beams = torch.cat([beams[rows], torch.tensor(tokens, device=idx.device).unsqueeze(1)], dim=1)
            scores = torch.tensor(kept_scores, device=idx.device).view(len(searching), K)
        for i, prompt in enumerate(searching):  # max_new_tokens reached (or none asked for)
            width = scores.size(1)
            close(prompt, beams[i * width:(i + 1) * width], scores[i].tolist())
        self.train(was_training)
        return best

    @torch.inference_mode()
    def decode_each(self, prompts: list[list[int]], max_new_tokens: int, eos_id: int | None = None,
                    num_beams: int = 1, batch_size: int = 32) -> list[list[int]]:
        """Greedy (num_beams 1) or beam-search continuations of prompts of any lengths.

        Prompts of one length are decoded together, batch_size at a time: no padding, so every
        position is the one it has alone (the GPT's positions are absolute) and each prompt gets
        exactly what decoding it alone gives. Returns each prompt's new tokens, up to and
        including the first eos_id.
        """
        by_length: dict[int, list[int]] = {}
        for i, prompt in enumerate(prompts):
            by_length.setdefault(len(prompt), []).append(i)
        out: list[list[int]] = [[] for _ in prompts]
        for length, members in by_length.items():
            for start in range(0, len(members), batch_size):
                chunk = members[start:start + batch_size]
                idx = torch.tensor([prompts[i] for i in chunk], dtype=torch.long, device=self.device)
                if num_beams > 1:
                    rows = [row.tolist() for row in self.best_hypotheses(idx, max_new_tokens, num_beams, eos_id)]
                else:  # greedy rows end at their first eos_id: what follows is padding
                    rows = self.generate(idx, max_new_tokens, temperature=0, eos_id=eos_id).tolist()
                for i, row in zip(chunk, rows):
                    new = row[length:]
                    out[i] = new[:new.index(eos_id) + 1] if eos_id in new else new
        return out


def _walk_candidates(scores: list[float], flat_ids: list[int], vocab_size: int, num_beams: int,
                     eos_id: int | None) -> tuple[list[tuple[int, int, float]], list[tuple[int, float]]]:
    """One prompt's best candidates, best first (flat id = beam * V + token) -> the beams to keep,
    (beam, token, score), at most num_beams; and the hypotheses that ended, (beam, score)."""
    keep, ended = [], []
    for score, flat in zip(scores, flat_ids):
        if score == float("-inf"):  # only empty slots from here on
            break
        beam, token = divmod(flat, vocab_size)
        if token == eos_id:
            ended.append((beam, score))
        else:
            keep.append((beam, token, score))
        if len(keep) == num_beams:
            break
    return keep, ended


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
