"""Recurrent language models: Elman RNN, LSTM and GRU, one module for the three.

Token embedding -> dropout -> n_layer stacked recurrent layers (dropout between them)
-> dropout -> output head, tied to the embedding when the hidden size equals the
embedding width (Press & Wolf 2017; Inan et al. 2017). Shapes: B batch, T time,
E embedding width (n_embd), H hidden size, V vocabulary.

The same pretraining module, data, metrics and fine-tuning heads as the GPT: heads
read `hidden_states()` (B, T, H), the output of the last layer, where position t has
seen tokens 0..t. There is no positional encoding: order is in the recurrence, and
so is the decoding state, which `generate()` carries from token to token.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from lm_tasks.models.base import CausalLM

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


@dataclass
class RecurrentConfig:
    vocab_size: int
    family: str = "lstm"  # rnn (tanh Elman) | lstm | gru
    block_size: int = 128  # the training context (back-propagation through time spans one block)
    n_layer: int = 2
    n_embd: int = 256
    hidden_size: int | None = None  # null: n_embd (and then the head is tied to the embedding)
    dropout: float = 0.0
    eos_id: int | None = None
    pad_id: int | None = None

    def __post_init__(self) -> None:
        if self.family not in CELLS:
            raise ValueError(f"family must be one of {', '.join(CELLS)}, got {self.family!r}")
        if self.hidden_size is None:
            self.hidden_size = self.n_embd

    def to_dict(self) -> dict:
        return asdict(self)


class RecurrentState:
    """The recurrent layers' state after the tokens fed so far: h (L, B, H), and c for an LSTM."""

    def __init__(self):
        self.state: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep the batch rows that `rows` selects (beam search follows its surviving beams)."""
        if isinstance(self.state, tuple):
            self.state = tuple(s[:, rows] for s in self.state)
        elif self.state is not None:
            self.state = self.state[:, rows]

    def reset(self) -> None:
        self.state = None


class RecurrentLM(CausalLM):
    def __init__(self, cfg: RecurrentConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.rnn = CELLS[cfg.family](cfg.n_embd, cfg.hidden_size, num_layers=cfg.n_layer, batch_first=True,
                                     dropout=cfg.dropout if cfg.n_layer > 1 else 0.0)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        # Embeddings of about unit norm, std 1/sqrt(E): much smaller ones (GPT's 0.02) leave the
        # recurrence a near-constant input and training sits on the unigram plateau for long.
        # The recurrent weights keep PyTorch's uniform(-1/sqrt(H), 1/sqrt(H)).
        nn.init.normal_(self.wte.weight, mean=0.0, std=cfg.n_embd ** -0.5)
        if cfg.hidden_size == cfg.n_embd:
            self.lm_head.weight = self.wte.weight  # weight tying
        else:
            nn.init.normal_(self.lm_head.weight, mean=0.0, std=cfg.hidden_size ** -0.5)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def layer_of(self, name: str) -> int:
        if name.startswith("rnn."):  # rnn.weight_ih_l0, rnn.bias_hh_l1, ...
            return int(name.rsplit("_l", 1)[1]) + 1
        return 0 if name.startswith("wte.") else self.config.n_layer + 1

    def hidden_states(self, idx: torch.Tensor, cache: RecurrentState | None = None) -> torch.Tensor:
        """idx (B, T) -> the last layer's outputs (B, T, H); a cache continues from its state."""
        x = self.wte(idx)  # (B, T, E)
        if self.training:
            x = self.drop(x)
        state = cache.state if cache is not None else None
        out, state = self.rnn(x, state)  # (B, T, H); state (L, B, H) (LSTM: a pair)
        if cache is not None:
            cache.state = state
        return out

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: RecurrentState | None = None):
        """idx (B, T) token ids -> logits (B, T, V), and the mean cross-entropy if targets."""
        hidden = self.hidden_states(idx, cache)
        if self.training:
            hidden = self.drop(hidden)
        logits = self.lm_head(hidden)  # (B, T, V)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
        return logits, loss

    def new_cache(self) -> RecurrentState:
        return RecurrentState()

    def _next_logits(self, idx: torch.Tensor, cache: RecurrentState | None, first: bool) -> torch.Tensor:
        """Logits (B, V) for the token after idx: the whole of idx without a cache (a recurrent
        model has no context limit), else the state so far advanced by idx's last token."""
        if cache is None:
            return self(idx)[0][:, -1, :]
        if first:
            cache.reset()
            return self(idx, cache=cache)[0][:, -1, :]
        return self(idx[:, -1:], cache=cache)[0][:, -1, :]
