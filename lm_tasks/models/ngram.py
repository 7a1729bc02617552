"""An n-gram language model with interpolated Kneser-Ney smoothing: the baseline every
neural model must beat, fitted by counting the same packed training tokens.

For order n and a history h of n-1 tokens (Chen & Goodman 1998, interpolated form):

    P_k(w | h) = max(c_k(h w) - D_k, 0) / c_k(h .)  +  D_k * N_k(h .) / c_k(h .) * P_{k-1}(w | h')

h' is h without its first token, P_0(w) = 1/V. At the highest order c_k is the count of
the n-gram; below it, the continuation count: the number of distinct tokens seen before
h w (how many contexts w completes, not how often). c_k(h .) sums c_k(h w) over w,
N_k(h .) counts the w with c_k(h w) > 0, and D_k = n1 / (n1 + 2 n2) from the numbers of
k-grams counted once and twice (0.5 when none was counted once). A history never seen backs off to P_{k-1} whole. Every
token keeps a probability above zero, and each P_k sums to one over the vocabulary.

A k-gram is stored as one int64 key, its tokens as digits in base V (the vocabulary
size), so V ** n must stay below 2 ** 63. Tables are sorted key arrays searched with
`torch.searchsorted`, saved as safetensors like any model's weights. Held-out text is
scored in blocks of block_size tokens, with the history inside each block, exactly as
the neural models are, so bits per byte compare.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from lm_tasks.models.base import CausalLM

TABLES = ("gram_keys", "gram_counts", "context_keys", "context_totals", "context_types")


@dataclass
class NGramConfig:
    vocab_size: int
    order: int = 3
    block_size: int = 128  # held-out blocks, as the neural models are scored
    family: str = "ngram"
    eos_id: int | None = None
    pad_id: int | None = None

    def __post_init__(self) -> None:
        if self.order < 1:
            raise ValueError(f"An n-gram model needs order >= 1, got {self.order}")
        if self.vocab_size ** self.order >= 2 ** 63:
            raise ValueError(
                f"order {self.order} with a vocabulary of {self.vocab_size} tokens needs n-gram keys wider "
                f"than 63 bits; lower model.order or tokenizer.vocab_size"
            )

    def to_dict(self) -> dict:
        return asdict(self)


class NGramLM(CausalLM):
    trainable = False

    def __init__(self, cfg: NGramConfig, tables: dict[str, torch.Tensor] | None = None):
        super().__init__()
        self.config = cfg
        tables = tables or {}
        expected = [f"{name}_{k}" for k in range(1, cfg.order + 1) for name in TABLES] + ["discounts"]
        missing = [name for name in expected if name not in tables]
        if tables and missing:
            raise ValueError(f"The n-gram tables lack {', '.join(missing)} (an order-{cfg.order} model needs them)")
        for k in range(1, cfg.order + 1):
            for name in TABLES:
                default = torch.zeros(0, dtype=torch.int64 if name.endswith("keys") else torch.float32)
                self.register_buffer(f"{name}_{k}", tables.get(f"{name}_{k}", default))
        self.register_buffer("discounts", tables.get("discounts", torch.zeros(cfg.order)))

    @classmethod
    def fit(cls, cfg: NGramConfig, tokens: torch.Tensor) -> "NGramLM":
        """Count the n-grams of a token stream (1-D) and estimate the Kneser-Ney tables."""
        tokens = tokens.long()
        if tokens.numel() < cfg.order:
            raise ValueError(f"{tokens.numel()} training tokens cannot fit an order-{cfg.order} n-gram model")
        if int(tokens.max()) >= cfg.vocab_size:
            raise ValueError(f"token id {int(tokens.max())} is outside the vocabulary of {cfg.vocab_size}")
        V, tables = cfg.vocab_size, {}
        discounts = []
        distinct_above = None  # the distinct (k+1)-grams of the stream
        for k in range(cfg.order, 0, -1):
            if k == cfg.order:  # raw counts
                keys, counts = torch.unique(_stream_keys(tokens, k, V), return_counts=True)
            else:  # continuation counts: distinct tokens seen before each k-gram
                keys, counts = torch.unique(distinct_above % V ** k, return_counts=True)
            distinct_above = torch.unique(_stream_keys(tokens, k, V)) if k > 1 else None
            context_keys, position, types = torch.unique(keys // V, return_inverse=True, return_counts=True)
            totals = torch.zeros(len(context_keys), dtype=torch.float64).scatter_add_(0, position, counts.double())
            n1, n2 = int((counts == 1).sum()), int((counts == 2).sum())
            discounts.append(n1 / (n1 + 2 * n2) if n1 else 0.5)  # D = 0 would give unseen tokens p = 0
            tables.update({f"gram_keys_{k}": keys, f"gram_counts_{k}": counts.float(),
                           f"context_keys_{k}": context_keys, f"context_totals_{k}": totals.float(),
                           f"context_types_{k}": types.float()})
        tables["discounts"] = torch.tensor(discounts[::-1], dtype=torch.float32)  # index k-1 is order k
        return cls(cfg, tables)

    def num_parameters(self, exclude_embeddings: bool = True) -> int:
        """The number of stored n-grams (the estimated probabilities)."""
        return sum(getattr(self, f"gram_keys_{k}").numel() for k in range(1, self.config.order + 1))

    def probabilities(self, idx: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        """P(words | history) for histories idx (B, T) and candidates words (B, T, M) -> (B, T, M).

        The history of position t is idx[:, :t+1] (its last order-1 tokens)."""
        V = self.config.vocab_size
        p = torch.full(words.shape, 1.0 / V, dtype=torch.float32, device=words.device)
        context = torch.zeros_like(idx)  # the key of the last k-1 tokens
        positions = torch.arange(idx.size(1), device=idx.device)
        for k in range(1, self.config.order + 1):
            if k > 1:  # extend every history by one token on the left
                shift = k - 2
                earlier = torch.zeros_like(idx)
                if shift < idx.size(1):
                    earlier[:, shift:] = idx[:, :idx.size(1) - shift]
                context = earlier * V ** (k - 2) + context
            has_history = (positions >= k - 2).expand_as(idx)  # (B, T): k-1 tokens exist
            at, found = _find(getattr(self, f"context_keys_{k}"), context)  # one search for both columns
            total = torch.where(found, getattr(self, f"context_totals_{k}")[at], 1.0).unsqueeze(-1)  # (B, T, 1)
            types = torch.where(found, getattr(self, f"context_types_{k}")[at], 0.0).unsqueeze(-1)
            at, seen = _find(getattr(self, f"gram_keys_{k}"), context.unsqueeze(-1) * V + words)
            count = torch.where(seen, getattr(self, f"gram_counts_{k}")[at], 0.0)
            discount = self.discounts[k - 1]
            smoothed = ((count - discount).clamp(min=0) + discount * types * p) / total
            p = torch.where((found & has_history).unsqueeze(-1), smoothed, p)
        return p

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """idx (B, T) -> log-probabilities (B, T, V) as logits; with targets, (None, mean
        cross-entropy): the loss needs only the targets' probabilities, not all V of them."""
        if targets is None:
            words = torch.arange(self.config.vocab_size, device=idx.device).expand(*idx.shape, -1)
            return self.probabilities(idx, words).log(), None
        return None, self.token_losses(idx, targets)[targets != -100].mean()

    def token_losses(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """-log P(target | history) per position (B, T), 0 where the target is ignored (-100)."""
        p = self.probabilities(idx, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T)
        return torch.where(targets != -100, -p.log(), 0.0)

    def _next_logits(self, idx: torch.Tensor, cache: None, first: bool) -> torch.Tensor:
        history = idx[:, -max(self.config.order - 1, 1):]
        return self(history)[0][:, -1, :]


def _stream_keys(tokens: torch.Tensor, k: int, V: int) -> torch.Tensor:
    """The key of every k-gram of a 1-D token stream: (N - k + 1,)."""
    n = tokens.numel() - k + 1
    keys = torch.zeros(n, dtype=torch.int64)
    for j in range(k):
        keys = keys * V + tokens[j:j + n]
    return keys


def _find(keys: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each query sits in the sorted keys, and whether it is there (index 0 when not)."""
    if keys.numel() == 0:
        return torch.zeros(query.shape, dtype=torch.long, device=query.device), torch.zeros(
            query.shape, dtype=torch.bool, device=query.device)
    at = torch.searchsorted(keys, query.reshape(-1)).clamp(max=keys.numel() - 1).view(query.shape)
    found = keys[at] == query
    return torch.where(found, at, 0), found
