"""Embedded task datasets the project generates itself: offline, seeded, no one else's text.

Each is small, learnable by the tiny model in a few minutes on a CPU, and built so
that the task's trivial baseline scores poorly (e.g. balanced classes).
"""

from __future__ import annotations

import random

from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

SUBJECTS = [
    "the film", "this book", "the meal", "our hotel room", "the concert", "that phone", "the service",
    "this game", "the lecture", "the new album", "the museum tour", "the train ride", "the coffee",
    "the play", "this laptop", "the garden", "the interview", "the software update", "the festival",
]
POSITIVE = ["wonderful", "delightful", "excellent", "brilliant", "charming", "superb", "pleasant",
            "great", "lovely", "enjoyable", "fantastic", "moving"]
NEGATIVE = ["dreadful", "boring", "awful", "terrible", "disappointing", "clumsy", "poor", "dull",
            "tedious", "annoying", "bland", "painful"]
DEGREES = ["really", "truly", "rather", "quite", "very", "surprisingly"]


def sentiment(n_train: int = 2000, n_validation: int = 300, seed: int = 0) -> DatasetDict:
    """Short reviews labelled negative/positive; negation ("was not great") flips the label."""
    rng = random.Random(seed)

    def example() -> tuple[str, int]:
        label = rng.randrange(2)
        negated = rng.random() < 0.25
        words = POSITIVE if label != negated else NEGATIVE  # a negated positive word reads negative
        subject, adjective, degree = rng.choice(SUBJECTS), rng.choice(words), rng.choice(DEGREES)
        template = rng.randrange(4)
        if negated:
            text = f"{subject.capitalize()} was not {adjective} at all."
        elif template == 0:
            text = f"{subject.capitalize()} was {degree} {adjective}."
        elif template == 1:
            text = f"I found {subject} {adjective} and {rng.choice(words)}."
        elif template == 2:
            text = f"Honestly, {subject} is {degree} {adjective}."
        else:
            text = f"What a {adjective} experience {subject} turned out to be!"
        return text, label

    features = Features({"text": Value("string"), "label": ClassLabel(names=["negative", "positive"])})
    splits = {}
    for split, n in (("train", n_train), ("validation", n_validation)):
        texts, labels = zip(*(example() for _ in range(n)))
        splits[split] = Dataset.from_dict({"text": list(texts), "label": list(labels)}, features=features)
    return DatasetDict(splits)


EMBEDDED = {"classification": sentiment}


def embedded_task_dataset(task: str, seed: int) -> DatasetDict:
    return EMBEDDED[task](seed=seed)
