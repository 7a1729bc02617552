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




# --- translation: English into "Kelvish", a small invented language -----------------------
# Every English word has one Kelvish word, and adjectives follow their noun
# ("the red fox" -> "ka fox-word red-word"), so copying the source scores near zero
# while the mapping is learnable from a few thousand pairs.

NOUNS = ["fox", "dog", "child", "teacher", "river", "house", "bird", "farmer", "king", "garden",
         "horse", "ship", "baker", "city", "forest", "student"]
ADJECTIVES = ["red", "small", "old", "happy", "quiet", "tall", "young", "brave"]
VERBS = ["sees", "follows", "helps", "finds", "paints", "watches", "calls", "greets"]
_SYLLABLES = ["ka", "lo", "mi", "ren", "tu", "sa", "vor", "el", "qi", "dan", "po", "ish", "ru", "zen", "ta", "no"]


def _kelvish_lexicon() -> dict[str, str]:
    rng = random.Random(1234)  # fixed: the language never changes between runs
    lexicon = {"the": "ka", "and": "ul"}
    used = set(lexicon.values())
    for word in NOUNS + ADJECTIVES + VERBS:
        while True:
            candidate = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3)))
            if candidate not in used:
                used.add(candidate)
                lexicon[word] = candidate
                break
    return lexicon


def translation(n_train: int = 4000, n_validation: int = 300, seed: int = 0) -> DatasetDict:
    rng, lexicon = random.Random(seed), _kelvish_lexicon()

    def noun_phrase() -> tuple[str, str]:
        noun, adjective = rng.choice(NOUNS), rng.choice(ADJECTIVES)
        return f"the {adjective} {noun}", f"ka {lexicon[noun]} {lexicon[adjective]}"

    def example() -> tuple[str, str]:
        (subject_en, subject_kv), (object_en, object_kv) = noun_phrase(), noun_phrase()
        verb = rng.choice(VERBS)
        return (f"{subject_en} {verb} {object_en}.".capitalize(),
                f"{subject_kv} {lexicon[verb]} {object_kv}.".capitalize())

    return _pairs(example, n_train, n_validation)


# --- summarization: a short report whose one-sentence summary is its key finding --------
# The key sentence sits at a random position after an opening sentence, so the lead
# baseline (the first sentence) misses it.

TOPICS = ["the harbour", "the old mill", "the school garden", "the city library", "the river bridge",
          "the night market", "the mountain road", "the village bakery"]
FILLERS = [
    "The weather was mild for most of the week.", "Several visitors stopped by in the afternoon.",
    "Nobody expected the meeting to run so late.", "The notes were filed with the other papers.",
    "A small crowd had gathered near the entrance.", "The lights stayed on until midnight.",
    "Most of the work was done before noon.", "Everyone agreed to meet again next month.",
]


def summarization(n_train: int = 3000, n_validation: int = 300, seed: int = 0) -> DatasetDict:
    rng = random.Random(seed)

    def example() -> tuple[str, str]:
        subject, obj = rng.sample(NOUNS, 2)
        finding = f"the {rng.choice(ADJECTIVES)} {subject} {rng.choice(VERBS)} the {obj}"
        sentences = rng.sample(FILLERS, rng.randint(2, 3))
        sentences.insert(rng.randint(0, len(sentences)), f"In the end, {finding}.")
        document = f"This is a report about {rng.choice(TOPICS)}. " + " ".join(sentences)
        return document, f"{finding.capitalize()}."

    return _pairs(example, n_train, n_validation)


# --- extractive QA: who lives where and does what ---------------------------------------
# Each context states facts about three people; questions ask for one fact, and one in
# ten asks about someone the context does not mention (unanswerable: no gold answer).

PEOPLE = ["Alice", "Bruno", "Chen", "Dara", "Emil", "Farah", "Goran", "Hana", "Ivo", "Jana", "Kofi", "Lena",
          "Mateo", "Nora", "Omar", "Petra"]
CITIES = ["Lisbon", "Oslo", "Cairo", "Lima", "Kyoto", "Dublin", "Quito", "Hanoi", "Turin", "Accra"]
JOBS = ["baker", "pilot", "nurse", "painter", "farmer", "teacher", "lawyer", "sailor", "chemist", "tailor"]
PETS = ["a grey cat", "two goldfish", "an old dog", "a green parrot", "a tortoise", "three rabbits"]
FACTS = {
    "city": ("{name} lives in {value}.", "Where does {name} live?", CITIES),
    "job": ("{name} works as a {value}.", "What is {name}'s job?", JOBS),
    "pet": ("{name} keeps {value} at home.", "What does {name} keep at home?", PETS),
}


def question_answering(n_train: int = 3000, n_validation: int = 300, seed: int = 0) -> DatasetDict:
    rng = random.Random(seed)

    def example() -> dict:
        people = rng.sample(PEOPLE, 4)
        present, absent = people[:3], people[3]
        sentences = []
        for name in present:
            for kind in rng.sample(list(FACTS), 2):
                statement, question, values = FACTS[kind]
                value = rng.choice(values)
                sentences.append((statement.format(name=name, value=value), name, kind, value))
        rng.shuffle(sentences)
        context = " ".join(s[0] for s in sentences)
        if rng.random() < 0.1:
            kind = rng.choice(list(FACTS))
            return {"context": context, "question": FACTS[kind][1].format(name=absent),
                    "answers": {"text": [], "answer_start": []}}
        sentence, name, kind, value = rng.choice(sentences)
        start = context.index(sentence) + sentence.index(value)
        return {"context": context, "question": FACTS[kind][1].format(name=name),
                "answers": {"text": [value], "answer_start": [start]}}

    return DatasetDict({split: Dataset.from_list([example() for _ in range(n)])
                        for split, n in (("train", n_train), ("validation", n_validation))})


def _pairs(example, n_train: int, n_validation: int) -> DatasetDict:
    splits = {}
    for split, n in (("train", n_train), ("validation", n_validation)):
        sources, targets = zip(*(example() for _ in range(n)))
        splits[split] = Dataset.from_dict({"source": list(sources), "target": list(targets)})
    return DatasetDict(splits)


EMBEDDED = {"classification": sentiment, "qa": question_answering, "translation": translation,
            "summarization": summarization}


def embedded_task_dataset(task: str, seed: int) -> DatasetDict:
    return EMBEDDED[task](seed=seed)
