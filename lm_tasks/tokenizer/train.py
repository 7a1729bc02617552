"""Build, train, save and load tokenizers.

Byte-level BPE is the default: it has no unknown token and decodes every byte
sequence back exactly. WordPiece and Unigram are there for comparison.
Training reads the dataset through an iterator of batches; no text is dumped
to temporary files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from lm_tasks.artifacts import atomic_path
from lm_tasks.config import TokenizerConfig


@dataclass(frozen=True)
class SpecialTokens:
    """Ids the model and the packer need, read from the trained tokenizer."""

    eos_id: int
    pad_id: int
    vocab_size: int


def build_tokenizer(cfg: TokenizerConfig) -> tuple[Tokenizer, trainers.Trainer]:
    specials = cfg.special_tokens
    if cfg.kind == "bpe":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency, special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=True,
        )
    elif cfg.kind == "wordpiece":
        tokenizer = Tokenizer(models.WordPiece(unk_token=cfg.unk_token))
        tokenizer.normalizer = normalizers.NFC()
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(
            vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency, special_tokens=specials,
            show_progress=True,
        )
    else:
        tokenizer = Tokenizer(models.Unigram())
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(
            vocab_size=cfg.vocab_size, special_tokens=specials, unk_token=cfg.unk_token, show_progress=True,
        )
    return tokenizer, trainer


def train_tokenizer(dataset: Dataset, cfg: TokenizerConfig, out_path: str | Path) -> Tokenizer:
    """Train on the "text" column of `dataset` and save to `out_path` (tokenizer.json)."""
    tokenizer, trainer = build_tokenizer(cfg)
    tokenizer.train_from_iterator(_batches(dataset), trainer=trainer, length=len(dataset))
    with atomic_path(out_path) as tmp:
        tokenizer.save(str(tmp))
    return tokenizer


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"No tokenizer at {path}. Run the tokenizer stage first (python -m flows.tokenizer)."
        )
    return Tokenizer.from_file(str(path))


def special_token_ids(tokenizer: Tokenizer, cfg: TokenizerConfig) -> SpecialTokens:
    ids = {}
    for role, token in (("eos", cfg.eos_token), ("pad", cfg.pad_token)):
        ids[role] = tokenizer.token_to_id(token)
        if ids[role] is None:
            raise ValueError(f"The tokenizer has no {role} token '{token}' (tokenizer.{role}_token)")
    return SpecialTokens(eos_id=ids["eos"], pad_id=ids["pad"], vocab_size=tokenizer.get_vocab_size())


def _batches(dataset: Dataset, batch_size: int = 1000) -> Iterator[list[str]]:
    for batch in dataset.iter(batch_size=batch_size):
        yield batch["text"]
