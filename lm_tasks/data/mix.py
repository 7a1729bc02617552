"""Domain-adaptive pretraining: the fine-tuning tasks' training text in the pretraining
corpus, and how often each kind of row appears (`data.mix`).

The tasks' training examples (lm_tasks/tasks/data.py `training_texts`) join the raw training
split as rows of their own source (`finetune.<task>:train`) before cleaning, so they are
normalised, filtered, deduplicated and decontaminated like the corpus; the tasks'
evaluation splits never join (they are what decontamination removes).

The validation split measures what is trained on: when task text joins, `data.val_ratio` of
its cleaned rows (seeded) move to validation beside the corpus's own held-out rows, and a
corpus weighed 0 keeps none of its rows there (`mix_validation`); otherwise a pretraining
on task text would pick its best checkpoint by the loss on a corpus it never sees.

Weights are applied last, to the training split only: a weight w repeats every row of
its kind int(w) times and adds a seeded sample of the fraction w - int(w) of them; the
rows of the result are then shuffled (seeded), so the repeats are spread over the token
stream rather than packed side by side. Dedup ran before, so repeats are kept.
"""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
from datasets import Dataset, concatenate_datasets

from lm_tasks.config import MixConfig
from lm_tasks.data.cleaning import StepReport
from lm_tasks.data.columns import column

TASK_SOURCE = "finetune."  # the source of a task row starts with this: finetune.<task>:train


def add_task_text(train: Dataset, task_texts: dict[str, list[str]], read: StepReport) -> Dataset:
    """`train` with every task's training documents appended as rows; `read` (the split's
    read step) counts them, per task in its details."""
    rows = [(text, f"{name}:train", i) for name, texts in task_texts.items() for i, text in enumerate(texts, 1)]
    if not rows:
        return train
    texts, sources, numbers = zip(*rows)
    added = Dataset.from_dict({"text": list(texts), "source": list(sources), "row": list(numbers)},
                              features=train.features)
    n_bytes = sum(len(text.encode("utf-8", errors="replace")) for text in texts)
    read.rows_in += len(added)
    read.rows_out += len(added)
    read.bytes_in += n_bytes
    read.bytes_out += n_bytes
    read.details["task_text_rows"] = {name: len(texts) for name, texts in task_texts.items()}
    return concatenate_datasets([train, added])


def weigh(train: Dataset, mix: MixConfig, seed: int) -> tuple[Dataset, StepReport]:
    """The training split with `mix`'s weights applied (see the module notes), and its report."""
    is_task = _is_task(train)
    rng = np.random.default_rng(seed)
    picked, counts = [], {}
    for kind, rows, weight in (("corpus", np.flatnonzero(~is_task), mix.corpus),
                               ("tasks", np.flatnonzero(is_task), mix.tasks)):
        whole, fraction = int(weight), weight - int(weight)
        parts = [rows] * whole
        if fraction and len(rows):
            parts.append(np.sort(rng.choice(rows, round(fraction * len(rows)), replace=False)))
        counts[kind] = {"rows": len(rows), "weight": weight, "rows_out": int(sum(len(p) for p in parts))}
        picked += parts
    order = np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)
    rng.shuffle(order)
    weighed = train.select(order)
    n_bytes = column(train, "n_bytes").to_numpy()
    report = StepReport("mix", len(train), len(weighed), int(n_bytes.sum()), int(n_bytes[order].sum()),
                        details=counts)
    return weighed, report


def mix_validation(train: Dataset, validation: Dataset, mix: MixConfig, val_ratio: float,
                   seed: int) -> tuple[Dataset, Dataset, StepReport]:
    """(train, validation, the validation split's report) for the mix (see the module notes)."""
    rows_in, bytes_in = len(validation), _bytes(validation)
    moved = 0
    task_rows = np.flatnonzero(_is_task(train))
    if mix.tasks > 0 and not _is_task(validation).any() and len(task_rows) >= 2:
        rng = np.random.default_rng(seed)
        count = min(len(task_rows) - 1, max(1, round(val_ratio * len(task_rows))))
        held = np.zeros(len(train), dtype=bool)
        held[rng.choice(task_rows, count, replace=False)] = True
        validation = concatenate_datasets([validation, train.select(np.flatnonzero(held))])
        train, moved = train.select(np.flatnonzero(~held)), count
    report = StepReport("mix", rows_in, 0, bytes_in, 0, details={"task_rows_held_out": moved})
    if mix.corpus == 0:
        is_task = _is_task(validation)
        if not is_task.all():
            report.dropped["corpus_weighed_0"] = int((~is_task).sum())
            report.dropped_bytes["corpus_weighed_0"] = _bytes(validation.select(np.flatnonzero(~is_task)))
            validation = validation.select(np.flatnonzero(is_task))
    report.rows_out, report.bytes_out = len(validation), _bytes(validation)
    return train, validation, report


def _is_task(ds: Dataset) -> np.ndarray:
    return pc.starts_with(column(ds, "source"), TASK_SOURCE).to_numpy(zero_copy_only=False)


def _bytes(ds: Dataset) -> int:
    return int(column(ds, "n_bytes").to_numpy().sum()) if len(ds) else 0
