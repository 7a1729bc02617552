"""Config flattening for MLflow params and the atomic artifact helpers."""

from __future__ import annotations

import pytest

from lm_tasks.artifacts import atomic_path, files_digest, read_json, write_json
from lm_tasks.tracking import flatten


def test_flatten_nested_config():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {"a.b": "1", "a.c.d": "[1, 2]", "e": "None"}


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"x": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half-written")
            raise RuntimeError("interrupted")
    assert read_json(target) == {"x": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_files_digest_depends_on_content_not_location(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.bin").write_bytes(b"tokens")
    digest_a = files_digest([tmp_path / "a" / "x.bin"], tmp_path / "a")
    assert digest_a == files_digest([tmp_path / "b" / "x.bin"], tmp_path / "b")
    (tmp_path / "b" / "x.bin").write_bytes(b"tokenz")
    assert digest_a != files_digest([tmp_path / "b" / "x.bin"], tmp_path / "b")
