"""Models: the GPT language model and its on-disk format."""

from lm_tasks.models.gpt import GPT, GPTConfig
from lm_tasks.models.io import load_pretrained, save_pretrained

__all__ = ["GPT", "GPTConfig", "load_pretrained", "save_pretrained"]
