"""Hydra sweeper `study` (hydra/sweeper=study, chosen by conf/hparams_search/*): a
hyperparameter search driven by Optuna (lm_tasks/search.py), one lifecycle per trial."""
