"""A decoder-only Transformer language model, readable top to bottom.

Token embedding + positional encoding (learned, or the fixed sinusoids of
"Attention Is All You Need") -> n_layer pre-norm blocks of multi-head causal
self-attention and an MLP -> final LayerNorm -> output head tied to the token
embedding. Shapes: B batch, T time (tokens), C channels (n_embd), H heads,
D head size (C/H), V vocabulary.

The defaults are that textbook design (GPT-2's layout). Options from current
small-model practice, each one config key (the defaults build bit-identical models):

    pos_encoding=rotary   RoPE: queries and keys rotated by their position inside
                          attention, no table added to the embeddings (Su et al. 2021)
    norm=rmsnorm          RMSNorm instead of LayerNorm, everywhere (Zhang & Sennrich 2019)
    activation=swiglu     gated MLP silu(x W) * (x V) -> W2, hidden size ~8/3 C so the
                          parameters stay those of the 4C GELU MLP (Shazeer 2020)
    activation=relu2      relu(x)^2 in the 4C MLP (So et al. 2021, "Primer")
    qk_norm=true          RMSNorm of each head's queries and keys before the dot product
    logit_softcap=30      cap * tanh(logits / cap) on the output logits (Gemma 2)

Generation is the one routine every family shares (`CausalLM.generate` in
base.py); the GPT feeds it through a key/value cache, so each new token costs
one position of attention, not a whole prefix.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from lm_tasks.config import ACTIVATIONS, NORMS, POS_ENCODINGS
from lm_tasks.models.base import CausalLM

NORM_EPS = 1e-5  # nn.LayerNorm's default, used by RMSNorm too
ROPE_BASE = 10000.0

# The fixed table is added at the scale the learned one starts from (std 0.02 per entry).
# Unscaled (RMS 0.71) it drowns token embeddings of std 0.02 and training stalls for
# hundreds of steps; Vaswani et al. scale the embeddings up by sqrt(C) instead, which
# the output head tied to them (and GPT-2's layout) cannot follow.
SINUSOIDAL_SCALE = 0.02 * math.sqrt(2)


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False
    pos_encoding: str = "learned"  # learned | sinusoidal | rotary
    pos_scale: float = SINUSOIDAL_SCALE  # what the sinusoidal table is multiplied by
    # gelu (exact erf form) | gelu_tanh (GPT-2's tanh approximation, needed to run GPT-2 weights exactly)
    # | relu2 (relu(x)^2) | swiglu (gated MLP, hidden size swiglu_hidden(n_embd))
    activation: str = "gelu"
    norm: str = "layernorm"  # layernorm | rmsnorm (every norm, the final one included)
    qk_norm: bool = False  # RMSNorm of each head's queries and keys before attention
    logit_softcap: float | None = None  # cap * tanh(logits / cap) on the output logits

    def __post_init__(self) -> None:
        for key, value, choices in (("pos_encoding", self.pos_encoding, POS_ENCODINGS),
                                    ("activation", self.activation, ACTIVATIONS), ("norm", self.norm, NORMS)):
            if value not in choices:
                raise ValueError(f"{key} must be one of {', '.join(choices)}; got {value!r}")
        if self.logit_softcap is not None and not self.logit_softcap > 0:
            raise ValueError(f"logit_softcap must be positive or None, got {self.logit_softcap}")
        if self.pos_encoding == "rotary" and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"pos_encoding=rotary needs an even head size, got {self.n_embd // self.n_head}")
    eos_id: int | None = None
    pad_id: int | None = None
    family: str = "gpt"

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


def make_norm(cfg: GPTConfig, size: int) -> nn.Module:
    """The block and final norm `cfg.norm` names: LayerNorm (bias as cfg.bias) or RMSNorm (a gain only)."""
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(size, eps=NORM_EPS)
    return nn.LayerNorm(size, bias=cfg.bias)


def rotary_tables(block_size: int, head_size: int, base: float = ROPE_BASE) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of RoPE's angles pos / base^(2i/D), each (T, D/2): position pos rotates the pair
    (x_i, x_{i+D/2}) of a query or key by angle pos * base^(-2i/D) (GPT-NeoX/Llama's half split)."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)  # (D/2,)
    angles = torch.outer(torch.arange(block_size, dtype=torch.float32), inv_freq)  # (T, D/2)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, H, T, D) by the angles of its T positions: cos, sin (T, D/2)."""
    x1, x2 = x.chunk(2, dim=-1)  # 2 x (B, H, T, D/2)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        self.n_head, self.layer = cfg.n_head, layer
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        if cfg.qk_norm:  # one gain per channel of a head, shared by the heads (as Qwen3, OLMo 2 per layer)
            self.q_norm = nn.RMSNorm(cfg.n_embd // cfg.n_head, eps=NORM_EPS)
            self.k_norm = nn.RMSNorm(cfg.n_embd // cfg.n_head, eps=NORM_EPS)
        self.qk_norm = cfg.qk_norm

    def forward(self, x: torch.Tensor, cache: KVCache | None = None,
                rotary: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """x (B, T, C); rotary: cos and sin (T, D/2) of these T tokens' positions, with pos_encoding=rotary."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        # (B, T, C) -> (B, H, T, C/H)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if rotary is not None:  # the cache keeps keys already rotated by their own positions
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)  # (B, H, T_past + T, C/H)
        # Without a past the usual causal mask; one new token may attend to every cached one.
        if k.size(2) != T and T != 1:
            raise ValueError("With a non-empty KV cache, feed one token at a time")
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=k.size(2) == T and T > 1, dropout_p=self.resid_dropout.p if self.training else 0.0
        )  # (B, H, T, C/H)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        y = self.proj(y)
        return self.resid_dropout(y) if self.training else y  # (skipping the call speeds up decoding)


def swiglu_hidden(n_embd: int, multiple: int = 64) -> int:
    """SwiGLU's hidden size: 8/3 C rounded to a multiple of 64 (at least 64), so its three matrices
    hold about the 8 C^2 parameters of the 4C two-matrix MLP (C=128: 320; C=768: 2048)."""
    return max(multiple, multiple * round(8 * n_embd / 3 / multiple))


class MLP(nn.Module):
    """C -> 4C -> activation -> C; or, for swiglu, C -> (gate, up) of h each -> silu(gate) * up -> C,
    its gate and up matrices fused in `fc` (h, 2h rows: one matmul)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.activation = cfg.activation
        hidden = swiglu_hidden(cfg.n_embd) if cfg.activation == "swiglu" else 4 * cfg.n_embd
        self.fc = nn.Linear(cfg.n_embd, 2 * hidden if cfg.activation == "swiglu" else hidden, bias=cfg.bias)
        self.proj = nn.Linear(hidden, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)
        self.approximate = "tanh" if cfg.activation == "gelu_tanh" else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.activation == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        elif self.activation == "relu2":
            h = F.relu(h).square()
        else:
            h = F.gelu(h, approximate=self.approximate)
        x = self.proj(h)
        return self.dropout(x) if self.training else x


class Block(nn.Module):
    """Pre-norm residual block: x + attn(ln(x)), then x + mlp(ln(x)) (ln: LayerNorm or RMSNorm)."""

    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        self.ln_1 = make_norm(cfg, cfg.n_embd)
        self.attn = CausalSelfAttention(cfg, layer)
        self.ln_2 = make_norm(cfg, cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None,
                rotary: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, rotary)
        return x + self.mlp(self.ln_2(x))


def sinusoidal_encoding(block_size: int, n_embd: int) -> torch.Tensor:
    """PE[pos, 2i] = sin(pos / 10000^(2i/C)), PE[pos, 2i+1] = cos(...); shape (T, C)."""
    position = torch.arange(block_size, dtype=torch.float32).unsqueeze(1)  # (T, 1)
    inv_freq = torch.exp(torch.arange(0, n_embd, 2, dtype=torch.float32) * (-math.log(10000.0) / n_embd))
    pe = torch.zeros(block_size, n_embd)
    pe[:, 0::2] = torch.sin(position * inv_freq)
    pe[:, 1::2] = torch.cos(position * inv_freq[: n_embd // 2])
    return pe


def position_table(cfg: GPTConfig) -> torch.Tensor:
    """The sinusoidal positions as the model adds them: (T, C), std 0.02 by default."""
    return sinusoidal_encoding(cfg.block_size, cfg.n_embd) * cfg.pos_scale


class GPT(CausalLM):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        cfg.__post_init__()  # the config's checks, also for one edited after it was built
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        if cfg.pos_encoding == "learned":
            self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        elif cfg.pos_encoding == "sinusoidal":
            self.register_buffer("pe", position_table(cfg), persistent=False)
        else:  # rotary: nothing added to the embeddings; cos and sin of every position, (T, D/2) each
            cos, sin = rotary_tables(cfg.block_size, cfg.n_embd // cfg.n_head)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, layer) for layer in range(cfg.n_layer))
        self.ln_f = make_norm(cfg, cfg.n_embd)
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

    @property
    def hidden_size(self) -> int:
        return self.config.n_embd

    def layer_of(self, name: str) -> int:
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return 0 if name.startswith(("wte.", "wpe.")) else self.config.n_layer + 1

    def num_parameters(self, exclude_embeddings: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings and self.config.pos_encoding == "learned":
            n -= self.wpe.weight.numel()
        return n

    def flops_per_token(self) -> float:
        """6N for the weights (N without the position table; the tied head counted once) plus
        the attention scores and mixing: 12 x layers x heads x head size x context (PaLM, app. B)."""
        c = self.config
        return 6.0 * self.num_parameters() + 12.0 * c.n_layer * c.n_head * (c.n_embd // c.n_head) * c.block_size

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """idx (B, T) -> the final normalised hidden states (B, T, C) that heads read."""
        # `forward` calls `_hidden_states`, not this: FSDP wraps this method as a second forward
        # (lm_tasks/training/fsdp.py), and its hooks must not run twice inside one forward.
        return self._hidden_states(idx, cache)

    def _hidden_states(self, idx: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"Sequence of {start + T} tokens exceeds block_size {self.config.block_size}")
        x = self.wte(idx)  # (B, T, C)
        rotary = None
        if self.config.pos_encoding == "learned":
            x = x + self.wpe.weight[start:start + T]  # positions start..start+T-1: (T, C) broadcast over B
        elif self.config.pos_encoding == "sinusoidal":
            x = x + self.pe[start:start + T]
        else:  # rotary: the same positions, applied to queries and keys in every layer
            rotary = (self.rope_cos[start:start + T], self.rope_sin[start:start + T])
        if self.training:
            x = self.drop(x)
        for block in self.blocks:
            x = block(x, cache, rotary) if rotary is not None else block(x, cache)
        return self.ln_f(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None):
        """idx (B, T) token ids -> logits (B, T, V), and the mean cross-entropy if targets.

        With a cache, idx continues the cached tokens (positions start after them).
        """
        logits = self.lm_head(self._hidden_states(idx, cache))  # (B, T, V)
        if self.config.logit_softcap is not None:  # squashed smoothly into (-cap, cap)
            cap = self.config.logit_softcap
            logits = cap * torch.tanh(logits / cap)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
        return logits, loss

    def new_cache(self) -> KVCache:
        return KVCache(self.config.n_layer, self.config.block_size)

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

