"""Made-up text for data tests: ordinary-looking paragraphs, no two near duplicates."""

from __future__ import annotations

import random

WORDS = ("river mountain quiet letter garden window morning silver market engine lantern harbor "
         "violet thunder meadow pocket ribbon candle forest anchor basket mirror orchard pepper "
         "saddle timber velvet whistle blanket compass harvest island jacket kettle ladder marble "
         "needle oyster parrot quilt rocket shadow tunnel umbrella valley wagon yellow zephyr").split()


def paragraphs(n: int, seed: int = 0, words: int = 14) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "." for _ in range(n)]
