"""The embedded default corpus: Python's own documentation, shipped with CPython.

`pydoc_data.topics` holds the text of the language reference topics that
`help()` shows (about 460 KB of English prose and short code examples). It is on
every Python installation, so the default lifecycle needs no network and the
project commits no one else's text.
"""

from __future__ import annotations

import re

from datasets import Dataset


def embedded_corpus() -> Dataset:
    """One row per paragraph of the pydoc topics, in a fixed (sorted) order."""
    from pydoc_data.topics import topics

    paragraphs = []
    for name in sorted(topics):
        paragraphs += [p for p in re.split(r"\n\s*\n", topics[name]) if p.strip()]
    return Dataset.from_dict({"text": paragraphs})
