"""lm_tasks: the language-model lifecycle as a plain Python library.

Data preparation, tokenizer training, GPT pretraining with Lightning, evaluation
and MLflow tracking. Orchestration lives in `flows/`; nothing here imports Prefect.
"""

__version__ = "0.1.0"
