"""The docs site builds with no broken link or anchor, its configuration reference names every
config key, and the README stays a short front door whose links all lead somewhere."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import get_args, get_origin, get_type_hints

from lm_tasks.config import CONF_DIR, LifecycleConfig

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def load_reference_hook():
    path = ROOT / "docs" / "hooks" / "config_reference.py"
    spec = importlib.util.spec_from_file_location("config_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dataclass_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted leaf key under `cls`, walked here independently of the generator."""
    keys = []
    hints = get_type_hints(cls)
    for f in fields(cls):
        kind = hints[f.name]
        if f.name == "resolved_yaml":  # the record of the config, not a key
            continue
        if get_origin(kind) is dict and is_dataclass(get_args(kind)[1]):
            keys += dataclass_keys(get_args(kind)[1], f"{prefix}{f.name}.<task>.")
        elif is_dataclass(kind):
            keys += dataclass_keys(kind, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def test_site_builds_strict(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's banner about MkDocs 2.0
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    reference = (site / "reference" / "config" / "index.html").read_text()
    for key in ("data.txt_sample_by", "trainer.max_steps", "finetune.&lt;task&gt;.lr", "cache.refresh"):
        assert key in reference, key


def test_config_reference_names_every_key_and_option():
    page = load_reference_hook().config_reference()
    keys = dataclass_keys(LifecycleConfig)
    assert len(keys) > 150  # the walk found the nested sections
    missing = [key for key in keys if f"`{key}`" not in page]
    assert not missing, f"keys missing from the configuration reference: {missing}"
    options = [path for path in CONF_DIR.rglob("*.yaml") if path.parent != CONF_DIR and not path.stem.startswith("_")]
    missing = [path for path in options
               if f"`{path.parent.relative_to(CONF_DIR).as_posix()}={path.stem}`" not in page]
    assert not missing, f"options missing from the configuration reference: {missing}"


def test_readme_is_short():
    size = len(README.read_text(encoding="utf-8"))
    assert size <= 12_000, f"README.md has {size} characters; move detail into docs/"


def test_readme_links_lead_somewhere():
    targets = re.findall(r"\]\(([^)\s]+)\)", README.read_text(encoding="utf-8"))
    local = [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]
    broken = [t for t in local if not (ROOT / t).exists()]
    assert not broken, f"README.md links to missing files: {broken}"
    unlinked = [p.relative_to(ROOT).as_posix() for p in sorted((ROOT / "docs").glob("*.md"))
                if p.relative_to(ROOT).as_posix() not in local]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"
