"""Tokenizers: train with HF `tokenizers`, save and load a single tokenizer.json."""

from lm_tasks.tokenizer.train import SpecialTokens, load_tokenizer, special_token_ids, train_tokenizer

__all__ = ["SpecialTokens", "load_tokenizer", "special_token_ids", "train_tokenizer"]
