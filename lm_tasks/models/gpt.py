"""A decoder-only Transformer language model, readable top to bottom.

Token embedding + positional encoding (learned, or the fixed sinusoids of
"Attention Is All You Need") -> n_layer pre-norm blocks of multi-head causal
self-attention and an MLP -> final LayerNorm -> output head tied to the token
embedding. Shapes: B batch, T time (tokens), C channels (n_embd), H heads,
V vocabulary.

Generation is one routine, `generate()`: sampling (temperature, top-k, top-p),
greedy (temperature 0) or beam search (num_beams > 1), all through a key/value
cache so each new token costs one position of attention, not a whole prefix.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


ACTIVATIONS = ("gelu", "gelu_tanh")


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False
    pos_encoding: str = "learned"  # learned | sinusoidal
    # gelu (exact erf form) | gelu_tanh (GPT-2's tanh approximation, needed to run GPT-2 weights exactly)
    activation: str = "gelu"
    eos_id: int | None = None
    pad_id: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class KVCache:
    """Keys and values of every layer for the tokens seen so far.

    Each layer's are kept in buffers allocated once for `max_length` positions,
    (B, H, max_length, C/H): a new token is written in place, not concatenated.
    """

    def __init__(self, n_layer: int, max_length: int):
        self.max_length = max_length
        self.buffers: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layer
        self.filled = [0] * n_layer

    @property
    def length(self) -> int:
        return self.filled[0]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's keys/values to the layer's cache; return the whole history."""
        start, end = self.filled[layer], self.filled[layer] + k.size(2)
        if end > self.max_length:
            raise ValueError(f"The KV cache holds {self.max_length} positions; {end} were asked for")
        if self.buffers[layer] is None:
            B, H, _, D = k.shape
            self.buffers[layer] = (k.new_empty(B, H, self.max_length, D), v.new_empty(B, H, self.max_length, D))
        keys, values = self.buffers[layer]
        keys[:, :, start:end] = k
        values[:, :, start:end] = v
        self.filled[layer] = end
        return keys[:, :, :end], values[:, :, :end]

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep the cache rows that `rows` selects (beam search follows its surviving beams)."""
        self.buffers = [None if kv is None else (kv[0][rows], kv[1][rows]) for kv in self.buffers]

    def reset(self) -> None:
        self.buffers = [None] * len(self.buffers)
        self.filled = [0] * len(self.filled)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        self.n_head, self.dropout, self.layer = cfg.n_head, cfg.dropout, layer
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        # (B, T, C) -> (B, H, T, C/H)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k, v = cache.update(self.layer, k, v)  # (B, H, T_past + T, C/H)
        # Without a past the usual causal mask; one new token may attend to every cached one.
        if k.size(2) != T and T != 1:
            raise ValueError("With a non-empty KV cache, feed one token at a time")
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=k.size(2) == T and T > 1, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, T, C/H)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        y = self.proj(y)
        return self.resid_dropout(y) if self.training else y  # (skipping the call speeds up decoding)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)
        self.approximate = "tanh" if cfg.activation == "gelu_tanh" else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(F.gelu(self.fc(x), approximate=self.approximate))
        return self.dropout(x) if self.training else x


class Block(nn.Module):
    """Pre-norm residual block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg, layer)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


def sinusoidal_encoding(block_size: int, n_embd: int) -> torch.Tensor:
    """PE[pos, 2i] = sin(pos / 10000^(2i/C)), PE[pos, 2i+1] = cos(...); shape (T, C)."""
    position = torch.arange(block_size, dtype=torch.float32).unsqueeze(1)  # (T, 1)
    inv_freq = torch.exp(torch.arange(0, n_embd, 2, dtype=torch.float32) * (-math.log(10000.0) / n_embd))
    pe = torch.zeros(block_size, n_embd)
    pe[:, 0::2] = torch.sin(position * inv_freq)
    pe[:, 1::2] = torch.cos(position * inv_freq[: n_embd // 2])
    return pe


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.pos_encoding not in ("learned", "sinusoidal"):
            raise ValueError(f"pos_encoding must be 'learned' or 'sinusoidal', got {cfg.pos_encoding!r}")
        if cfg.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be 'gelu' or 'gelu_tanh', got {cfg.activation!r}")
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        if cfg.pos_encoding == "learned":
            self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        else:
            self.register_buffer("pe", sinusoidal_encoding(cfg.block_size, cfg.n_embd), persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, layer) for layer in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying

        self.apply(self._init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layer).
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_parameters(self, exclude_embeddings: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings and self.config.pos_encoding == "learned":
            n -= self.wpe.weight.numel()
        return n

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """idx (B, T) -> the final normalised hidden states (B, T, C) that heads read."""
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"Sequence of {start + T} tokens exceeds block_size {self.config.block_size}")
        x = self.wte(idx)  # (B, T, C)
        if self.config.pos_encoding == "learned":
            x = x + self.wpe.weight[start:start + T]  # positions start..start+T-1: (T, C) broadcast over B
        else:
            x = x + self.pe[start:start + T]
        if self.training:
            x = self.drop(x)
        for block in self.blocks:
            x = block(x, cache)
        return self.ln_f(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None):
        """idx (B, T) token ids -> logits (B, T, V), and the mean cross-entropy if targets.

        With a cache, idx continues the cached tokens (positions start after them).
        """
        logits = self.lm_head(self.hidden_states(idx, cache))  # (B, T, V)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
        return logits, loss

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        """Decay matrices (linear and embedding weights); never biases or norm gains."""
        params = {n: p for n, p in self.named_parameters() if p.requires_grad}
        decay = [p for p in params.values() if p.dim() >= 2]
        no_decay = [p for p in params.values() if p.dim() < 2]
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

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
        cache = KVCache(self.config.n_layer, self.config.block_size) if use_cache else None
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
        cache = KVCache(self.config.n_layer, self.config.block_size)
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

    def _next_logits(self, idx: torch.Tensor, cache: KVCache | None, first: bool) -> torch.Tensor:
        """Logits (B, V) for the token after idx, reusing the cache where it holds idx's prefix.

        Past block_size tokens the context is cropped to the last block_size, exactly
        as without a cache, and the cache is rebuilt from that window.
        """
        if cache is None:
            return self(idx[:, -self.config.block_size:])[0][:, -1, :]
        if first or cache.length >= self.config.block_size:
            cache.reset()
            return self(idx[:, -self.config.block_size:], cache=cache)[0][:, -1, :]
        return self(idx[:, -1:], cache=cache)[0][:, -1, :]


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
