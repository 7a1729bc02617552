"""MkDocs hook: the configuration reference page, generated on every build.

The page is written from the two places configuration lives, so it cannot drift from them:
the dataclasses of `lm_tasks/config.py` (every dotted key with its type, its default and
the comment beside it) and the Hydra config groups in `conf/` (every option file shown as
it is). It is added to the site as a generated file, so nothing is written into `docs/`;
`mkdocs serve` rebuilds it when `conf/` or `lm_tasks/config.py` change (mkdocs.yml's `watch`).
"""

from __future__ import annotations

import ast
import html
import io
import json
import re
import tokenize
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import get_args, get_origin, get_type_hints

import yaml
from omegaconf import OmegaConf

from lm_tasks import config as config_module

PAGE = "reference/config.md"
CONF_DIR = config_module.CONF_DIR
NOT_KEYS = {"resolved_yaml"}  # a dataclass field that is the record of the config, not a key
TASK = "<task>"  # stands for each entry of `finetune` (a dict of task sections)
ABSENT = object()


def on_files(files, config):
    from mkdocs.structure.files import File

    files.append(File.generated(config, PAGE, content=config_reference()))
    return files


def config_reference() -> str:
    """The whole page, as markdown."""
    return "\n".join([
        "# Configuration reference",
        "",
        "Generated from `lm_tasks/config.py` and `conf/` every time the docs are built",
        "(`docs/hooks/config_reference.py`). Set a key with `key=value` and choose a group's",
        "option with `group=option` on any command line ([Concepts](../concepts.md#configuration)).",
        "",
        *keys_section(),
        *groups_section(),
    ])


# --- keys: the dataclasses of lm_tasks/config.py ------------------------------------------


def sections(cls: type, prefix: str = ""):
    """(prefix, dataclass, its leaf fields) for `cls`, then for every dataclass inside it."""
    hints = get_type_hints(cls)
    leaves, nested = [], []
    for f in fields(cls):
        if f.name in NOT_KEYS:
            continue
        kind = hints[f.name]
        if get_origin(kind) is dict and is_dataclass(get_args(kind)[1]):  # finetune: task -> TaskConfig
            nested.append((f"{prefix}{f.name}.{TASK}.", get_args(kind)[1]))
        elif is_dataclass(kind):
            nested.append((f"{prefix}{f.name}.", kind))
        else:
            leaves.append(f)
    yield prefix, cls, leaves
    for inner_prefix, inner in nested:
        yield from sections(inner, inner_prefix)


def leaf_keys() -> list[str]:
    """Every dotted key of LifecycleConfig (`data.txt_sample_by`, `finetune.<task>.lr`, ...)."""
    return [prefix + f.name for prefix, _, leaves in sections(config_module.LifecycleConfig) for f in leaves]


def keys_section() -> list[str]:
    field_notes = source_notes(Path(config_module.__file__))
    yaml_notes = conf_notes()
    defaults = composed_tree([])
    tasks = composed_tree(["finetune=all"])["finetune"]  # finetune is empty by default (finetune: none)
    lines = [
        "## Keys",
        "",
        "Every key of the validated config: `LifecycleConfig` and the dataclasses inside it.",
        "*Default* is the value with no overrides, as composed from `conf/` (interpolations",
        "such as `${paths.output_dir}` unresolved), or the dataclass default where `conf/` sets",
        "none; a `finetune.<task>.*` key shows each task's value when the tasks differ.",
        "*Meaning* is the comment beside the field in `lm_tasks/config.py`, else the one beside",
        "the key in `conf/`.",
        "",
    ]
    for prefix, cls, leaves in sections(config_module.LifecycleConfig):
        if not leaves:
            continue
        anchor = "keys-" + (prefix.strip(".").replace(f".{TASK}", "").replace(".", "-") or "top-level")
        lines += [f"### `{prefix}*` {{#{anchor}}}" if prefix else f"### Top-level keys {{#{anchor}}}", ""]
        if field_notes.get((cls.__name__, None)):
            lines += [text_cell(field_notes[(cls.__name__, None)]), ""]
        lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
        for f in leaves:
            key = prefix + f.name
            if TASK in key:
                default = task_default_cell(tasks, key, f)
                yaml_note = next((yaml_notes[key.replace(TASK, t)] for t in tasks
                                  if key.replace(TASK, t) in yaml_notes), "")
            else:
                default, yaml_note = default_cell(defaults, key, f), yaml_notes.get(key, "")
            meaning = field_notes.get((cls.__name__, f.name)) or yaml_note
            lines.append(f"| `{key}` | `{type_name(f)}` | {default} | {text_cell(meaning)} |")
        lines.append("")
    return lines


def source_notes(path: Path) -> dict[tuple[str, str | None], str]:
    """The comments beside each dataclass field (on its line, or on the lines just above
    it) and each class's docstring: {(class, field): text} and {(class, None): docstring}."""
    source = path.read_text()
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                if tok.type == tokenize.COMMENT}
    lines = source.splitlines()
    notes = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        notes[(node.name, None)] = ast.get_docstring(node) or ""
        for item in node.body:
            if not (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)):
                continue
            above, number = [], item.lineno - 1
            while number in comments and lines[number - 1].lstrip().startswith("#"):  # a comment-only line
                above.insert(0, comments[number])
                number -= 1
            beside = [comments[n] for n in range(item.lineno, item.end_lineno + 1) if n in comments]
            notes[(node.name, item.target.id)] = " ".join(above + beside)
    return notes


def conf_notes() -> dict[str, str]:
    """The comment beside each key in conf/, by dotted key. The entry config, the shared
    bases and the default options are read first, so their comment wins. Files of package
    `_global_` (experiments, debug, searches) are left out: their comments are about the preset."""
    defaults = chosen_options()

    def order(path: Path):
        group = path.parent.relative_to(CONF_DIR).as_posix()
        return (path.name != "lifecycle.yaml", not path.stem.startswith("_"), defaults.get(group) != path.stem, path)

    notes = {}
    for path in sorted(CONF_DIR.rglob("*.yaml"), key=order):
        text = path.read_text()
        header = re.match(r"# @package (\S+)", text)
        package = header.group(1) if header else path.parent.relative_to(CONF_DIR).as_posix().replace("/", ".")
        if package == "_global_":
            continue
        for key, comment in yaml_comments(text).items():
            full = key if package == "." else f"{package}.{key}"
            if comment and full not in notes:
                notes[full] = comment
    return notes


def yaml_comments(text: str) -> dict[str, str]:
    """{dotted key: comment} for one YAML file: the comment on the key's line (and its
    continuation on the lines below, indented past the key) or the comment lines just
    above it. A file's opening comment is about the file, not its first key."""
    found, path, above, previous = {}, [], [], None
    opening = True
    for line in text.splitlines():
        body = line.lstrip()
        indent = len(line) - len(body)
        if body.startswith("#"):
            comment = body.lstrip("#").strip()
            if previous and indent > previous[1] and found[previous[0]]:
                found[previous[0]] += " " + comment  # continues the comment beside the key above
            elif not opening:
                above.append(comment)
            continue
        opening = False
        match = re.match(r"([\w.-]+):(.*)$", body)
        if not match:  # a blank line or a list item: the comments above were not about a key
            above, previous = [], None
            continue
        key, rest = match.groups()
        path = [(i, k) for i, k in path if i < indent] + [(indent, key)]
        dotted = ".".join(k for _, k in path)
        beside = rest.split(" #", 1)[1].strip() if " #" in rest else ""
        found[dotted] = " ".join([*above, beside]).strip()
        above, previous = [], (dotted, indent)
    return found


def composed_tree(overrides: list[str]) -> dict:
    """The composed config as plain containers, interpolations left as written."""
    return OmegaConf.to_container(config_module.compose_config(overrides, with_hydra=True), resolve=False)


def composed(tree, key: str):
    """The value at a dotted key of a composed config, or ABSENT."""
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return ABSENT
        tree = tree[part]
    return tree


def default_cell(tree: dict, key: str, f) -> str:
    """The composed default of `key`, else the dataclass default, else an empty cell."""
    value = composed(tree, key)
    if value is ABSENT and f.default is not MISSING:
        value = f.default
    if value is ABSENT and f.default_factory is not MISSING:
        value = f.default_factory()
    return "" if value is ABSENT else code(value)


def task_default_cell(tasks: dict, key: str, f) -> str:
    """`finetune.<task>.x`: one value when every task agrees, else each task's."""
    rest = key.split(f".{TASK}.", 1)[1]
    values = {name: default_cell(entry, rest, f) for name, entry in tasks.items()}
    if len(set(values.values())) == 1:
        return next(iter(values.values()))
    return "<br>".join(f"{name}: {value}" for name, value in values.items())


def type_name(f) -> str:
    # config.py has `from __future__ import annotations`: the annotation is its source text.
    return f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))


def code(value) -> str:
    """A value as YAML writes it, in a code span (where a pipe does not split a table cell)."""
    if is_dataclass(value):
        value = {f.name: getattr(value, f.name) for f in fields(value)}
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    return f"`{json.dumps(value)}`"


def text_cell(text: str) -> str:
    """Prose in a table cell, `<name>` and `|` taken literally; code spans (odd parts
    between backticks) are literal already."""
    parts = " ".join(text.split()).split("`")
    return "`".join(part if odd else html.escape(part, quote=False).replace("|", "\\|")
                    for odd, part in zip([i % 2 for i in range(len(parts))], parts))


# --- config groups: conf/ -------------------------------------------------------------------


def chosen_options() -> dict[str, str]:
    """{group: option} from the defaults list of conf/lifecycle.yaml."""
    items = yaml.safe_load((CONF_DIR / "lifecycle.yaml").read_text())["defaults"]
    return {group: option for item in items if isinstance(item, dict) for group, option in item.items()
            if not group.startswith("override ")}


def groups_section() -> list[str]:
    chosen = chosen_options()
    lines = [
        "## Config groups",
        "",
        "`conf/lifecycle.yaml` is the entry config: its defaults list picks one option per",
        "group, and `group=option` on the command line picks another.",
        "",
        *yaml_block(CONF_DIR / "lifecycle.yaml"),
    ]
    for group_dir in sorted(p for p in CONF_DIR.rglob("*") if p.is_dir()):
        group = group_dir.relative_to(CONF_DIR).as_posix()
        files = sorted(group_dir.glob("*.yaml"))
        anchor = "group-" + group.replace("/", "-")
        listed = ", ".join(f"`{p.stem}`" for p in files if not p.stem.startswith("_"))
        in_defaults = f"; in the defaults list: `{chosen[group]}`" if group in chosen else ""
        lines += [f"### `{group}` {{#{anchor}}}", "", f"Options: {listed}{in_defaults}.", ""]
        for path in files:
            shared = path.stem.startswith("_")
            title = f"`{path.name}` (shared by the options)" if shared else f"`{group}={path.stem}`"
            lines += [f"#### {title} {{#{anchor}-{path.stem.strip('_')}}}", "", *yaml_block(path)]
    return lines


def yaml_block(path: Path) -> list[str]:
    return [f'```yaml title="conf/{path.relative_to(CONF_DIR).as_posix()}"', path.read_text().rstrip(), "```", ""]
