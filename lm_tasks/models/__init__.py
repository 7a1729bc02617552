"""Models: the language-model families and their one on-disk format.

    gpt                 decoder-only Transformer (gpt.py)
    rnn | lstm | gru    recurrent language models (recurrent.py)
    ngram               interpolated Kneser-Ney n-gram model (ngram.py)

All share `CausalLM` (base.py): forward(idx, targets) -> (logits, loss) and one `generate()`.
"""

from lm_tasks.models.base import CausalLM
from lm_tasks.models.gpt import GPT, GPTConfig
from lm_tasks.models.io import FAMILIES, build_config, build_model, load_pretrained, save_pretrained
from lm_tasks.models.ngram import NGramConfig, NGramLM
from lm_tasks.models.recurrent import RecurrentConfig, RecurrentLM

__all__ = ["CausalLM", "FAMILIES", "GPT", "GPTConfig", "NGramConfig", "NGramLM", "RecurrentConfig", "RecurrentLM",
           "build_config", "build_model", "load_pretrained", "save_pretrained"]
