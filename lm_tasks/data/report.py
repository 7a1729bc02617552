"""The data report: what the data stage did to every split, for people and for MLflow.

    report.json           every step: rows and bytes in/out, rows and bytes dropped per rule, details
                          (duplicate cluster sizes, language mix, PII replaced, ...)
    report.md             the same as tables (the Prefect artifact and the MLflow run show it)
    dropped_samples.jsonl a few dropped rows per rule with their source and row
    lengths.png           histograms of row length in bytes, read vs kept, per split
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lm_tasks.artifacts import atomic_path, write_json
from lm_tasks.data.cleaning import StepReport

FILES = ("report.json", "report.md", "dropped_samples.jsonl", "lengths.png")


def build_report(source: str, steps: dict[str, list[StepReport]], manifest: dict) -> dict:
    return {
        "source": source,
        "splits": manifest["splits"],
        "digest": manifest["digest"],
        "steps": {split: [{k: v for k, v in s.to_dict().items() if k != "samples"} for s in reports]
                  for split, reports in steps.items()},
    }


def write_report(report: dict, steps: dict[str, list[StepReport]], lengths: dict[str, dict], out_dir: Path) -> None:
    write_json(out_dir / "report.json", report, sort_keys=False)
    with atomic_path(out_dir / "report.md") as tmp:
        tmp.write_text(report_markdown(report))
    with atomic_path(out_dir / "dropped_samples.jsonl") as tmp:
        with open(tmp, "w") as f:
            for split, reports in steps.items():
                for step in reports:
                    for sample in step.samples:
                        f.write(json.dumps({"split": split, "step": step.step, **sample}, ensure_ascii=False) + "\n")
    plot_lengths(lengths, out_dir / "lengths.png")


def report_markdown(report: dict) -> str:
    lines = [f"Source `{report['source']}`, dataset digest `{report['digest'][:16]}`", ""]
    lines += ["| split | rows | bytes | shards |", "|---|---:|---:|---:|"]
    lines += [f"| {split} | {s['rows']:,} | {s['bytes']:,} | {s['shards']} |" for split, s in report["splits"].items()]
    for split, steps in report["steps"].items():
        lines += ["", f"**{split}**", "", "| step | rows in | rows out | bytes in | bytes out | dropped / changed |",
                  "|---|---:|---:|---:|---:|---|"]
        for s in steps:
            effect = ", ".join(f"{reason} {n:,} ({s['dropped_bytes'].get(reason, 0):,} B)"
                               for reason, n in sorted(s["dropped"].items(), key=lambda x: -x[1]))
            if s["changed"]:
                effect = f"changed {s['changed']:,}" + (f"; {effect}" if effect else "")
            lines.append(f"| {s['step']} | {s['rows_in']:,} | {s['rows_out']:,} | {s['bytes_in']:,} | "
                         f"{s['bytes_out']:,} | {effect or '-'} |")
        notes = [_note(s) for s in steps]
        lines += [""] + [f"- {note}" for note in notes if note]
    return "\n".join(lines) + "\n"


def _note(step: dict) -> str:
    d = step["details"]
    if step["step"] == "normalize" and d.get("invalid_utf8_rows"):
        return f"normalize: {d['invalid_utf8_rows']:,} rows had invalid UTF-8 bytes (removed)"
    if step["step"] == "pii":
        return "pii: replaced " + ", ".join(f"{n:,} {kind}" for kind, n in d["replaced"].items())
    if step["step"] == "language":
        mix = ", ".join(f"{lang} {n:,}" for lang, n in list(d["languages"].items())[:6])
        return f"language mix: {mix}" + (f" (kept: {', '.join(d['keep'])})" if d.get("keep") else "")
    if step["step"] in ("exact_dedup", "near_dedup") and d.get("cluster_sizes"):
        sizes = ", ".join(f"{n:,} of size {size}" for size, n in d["cluster_sizes"].items())
        return f"{step['step']} clusters: {sizes}"
    if step["step"] == "decontamination":
        sets = ", ".join(f"{name} ({n:,} texts)" for name, n in d.get("eval_sets", {}).items())
        return f"decontamination: {d['ngram']}-grams of {sets}"
    return ""


def length_histogram(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts over log-spaced byte-length bins (1 B .. the longest row); empty rows count
    in the first bin, so every row read is in the plot."""
    lengths = np.maximum(lengths, 1)
    top = max(2, int(lengths.max()) if len(lengths) else 2)
    edges = np.unique(np.logspace(0, np.log10(top) + 1e-9, 30).round())
    return np.histogram(lengths, bins=edges)


def plot_lengths(lengths: dict[str, dict], path: Path) -> None:
    # A Figure without pyplot (no GUI backend, no global state) and fixed margins: pyplot's import
    # and tight_layout's text measuring took about a second, most of the report's time.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5 * len(lengths), 3.5))
    fig.subplots_adjust(left=0.19 / len(lengths), right=1 - 0.02 / len(lengths), bottom=0.15, top=0.9,
                        wspace=0.3)
    axes = fig.subplots(1, len(lengths), squeeze=False)
    for ax, (split, parts) in zip(axes[0], lengths.items()):
        for label, values in parts.items():
            counts, edges = length_histogram(values)
            ax.stairs(counts, edges, label=f"{label} ({len(values):,} rows)", fill=label == "kept", alpha=0.6)
        ax.set_xscale("log")
        ax.set_title(f"{split}: row length")
        ax.set_xlabel("bytes (UTF-8)")
        ax.set_ylabel("rows")
        ax.legend()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
