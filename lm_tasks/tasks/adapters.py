"""Pick the adapter that tells the shared fine-tuning module how to handle a task."""

from __future__ import annotations

from tokenizers import Tokenizer

from lm_tasks.config import TaskConfig
from lm_tasks.tasks.classification import ClassificationAdapter
from lm_tasks.tasks.qa import QAAdapter
from lm_tasks.tasks.seq2seq import Seq2SeqAdapter


def build_adapter(task_cfg: TaskConfig, info: dict, model_config, tokenizer: Tokenizer,
                  sep_token: str, max_length: int):
    if task_cfg.task == "classification":
        return ClassificationAdapter(info["label_names"], task_cfg.pooling, max_length, model_config.pad_id)
    sep_id = tokenizer.token_to_id(sep_token)
    if sep_id is None:
        raise ValueError(f"The model's tokenizer has no separator token '{sep_token}' (tokenizer.sep_token); "
                         "pretrain with a tokenizer that includes it")
    if task_cfg.task == "qa":
        return QAAdapter(max_length, task_cfg.stride, task_cfg.max_answer_tokens, task_cfg.n_best, sep_id,
                         model_config.pad_id, task_cfg.allow_no_answer)
    return Seq2SeqAdapter(task_cfg.task, max_length, sep_id, model_config.eos_id, model_config.pad_id,
                          task_cfg.num_beams, task_cfg.max_new_tokens, tokenizer, task_cfg.extractive)
