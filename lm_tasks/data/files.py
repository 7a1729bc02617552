"""Input files named in the config: paths and globs resolved to files, or a clear error.

Kept apart from the loaders so that computing a stage's cache key (which digests its
input files) does not import `datasets`.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path


class DataSourceError(RuntimeError):
    """The configured data cannot be read; the message says what to change."""


def expand_files(patterns: list[str], key: str) -> list[str]:
    """Resolve paths and globs (relative to the working directory) to existing files."""
    files: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        matches = [m for m in matches if Path(m).is_file()]
        if not matches:
            raise DataSourceError(f"{key}: no file matches '{pattern}' (working directory: {os.getcwd()})")
        files += [str(Path(m).resolve()) for m in matches]
    return files
