"""Hostile data files: a record longer than `data.max_record_bytes` in any format is read
past in chunks, skipped and counted in the data report (with its file and line), and the
records around it survive; a 2 GB single-line file is read with peak memory under 1 GB."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lm_tasks.config import load_config
from lm_tasks.data.prepare import load_prepared, prepare_data
from lm_tasks.data.sources import EmptyDataError
from tests.text_samples import paragraphs

GOOD = paragraphs(30, seed=3)
LIMIT = 1 << 20  # a test-sized record limit: 1 MiB
BIG = 20 << 20  # a 20 MB record


def write_big(f, size: int, pattern: bytes = b"a") -> None:
    """`size` bytes of a repeated pattern (size: a multiple of its length), written in
    1 MiB blocks (never held whole)."""
    block = pattern * ((1 << 20) // len(pattern))
    for _ in range(size // len(block)):
        f.write(block)
    f.write(pattern * (size % len(block) // len(pattern)))


def prepare(tmp_path, files: list[Path], *overrides: str) -> dict:
    cfg = load_config(["data=local", f"data.files=[{','.join(map(str, files))}]",
                       f"data.max_record_bytes={LIMIT}", *overrides]).data
    return prepare_data(cfg, tmp_path / "out", seed=0)


def kept(tmp_path) -> list[str]:
    dataset = load_prepared(tmp_path / "out")
    return sorted(list(dataset["train"]["text"]) + list(dataset["validation"]["text"]))


def read_step(report: dict) -> dict:
    step = report["steps"]["train"][0]
    assert step["step"] == "read"
    return step


def dropped_samples(tmp_path) -> list[dict]:
    lines = (tmp_path / "out" / "dropped_samples.jsonl").read_text().splitlines()
    return [s for s in map(json.loads, lines) if s["reason"] == "oversized_record"]


def assert_one_skipped(tmp_path, report: dict, path: Path, row: int, size: int) -> None:
    read = read_step(report)
    assert read["dropped"] == {"oversized_record": 1}
    assert read["dropped_bytes"] == {"oversized_record": size}
    assert read["rows_in"] == read["rows_out"] + 1
    assert [(s["source"], s["row"], s["bytes"]) for s in dropped_samples(tmp_path)] == [(str(path), row, size)]
    assert "oversized_record 1" in (tmp_path / "out" / "report.md").read_text()
    assert kept(tmp_path) == sorted(GOOD)


@pytest.mark.parametrize("sample_by", ["paragraph", "line"])
def test_txt_line_without_a_line_break_is_skipped(tmp_path, sample_by, caplog):
    path = tmp_path / "input.txt"
    with open(path, "wb") as f:
        f.write("\n\n".join(GOOD[:10]).encode() + b"\n\n")  # lines 1..19, a blank line 20
        write_big(f, BIG)  # line 21
        f.write(b"\n\n" + "\n\n".join(GOOD[10:]).encode())
    report = prepare(tmp_path, [path], f"data.txt_sample_by={sample_by}")
    assert_one_skipped(tmp_path, report, path, 21, BIG + 1)  # its line end counts
    assert f"{path}:21" in caplog.text and "data.max_record_bytes=1048576" in caplog.text


def test_txt_paragraph_growing_past_the_limit_is_skipped(tmp_path):
    path = tmp_path / "input.txt"
    long_paragraph = ("many short lines in one paragraph\n" * 40_000).encode()  # 1.36 MB, no blank line
    with open(path, "wb") as f:
        f.write("\n\n".join(GOOD[:10]).encode() + b"\n\n" + long_paragraph + b"\n" + "\n\n".join(GOOD[10:]).encode())
    report = prepare(tmp_path, [path])
    assert_one_skipped(tmp_path, report, path, 21, len(long_paragraph))


def test_txt_document_larger_than_the_limit_is_skipped(tmp_path):
    small = []
    for i, text in enumerate(GOOD):
        small.append(tmp_path / f"doc{i:02}.txt")
        small[-1].write_text(text)
    big = tmp_path / "big.txt"
    with open(big, "wb") as f:
        write_big(f, BIG)
    report = prepare(tmp_path, [*small, big], "data.txt_sample_by=document")
    assert_one_skipped(tmp_path, report, big, 1, BIG)


def test_jsonl_line_too_long_is_skipped(tmp_path):
    path = tmp_path / "input.jsonl"
    with open(path, "wb") as f:
        f.write("".join(json.dumps({"text": t}) + "\n" for t in GOOD[:10]).encode())
        f.write(b'{"text": "')
        write_big(f, BIG)
        f.write(b'"}\n' + "".join(json.dumps({"text": t}) + "\n" for t in GOOD[10:]).encode())
    report = prepare(tmp_path, [path])
    assert_one_skipped(tmp_path, report, path, 11, BIG + len(b'{"text": ""}\n'))


def test_json_array_is_streamed_and_a_huge_record_skipped(tmp_path):
    path = tmp_path / "input.json"
    with open(path, "wb") as f:  # one line: the whole array
        f.write(b"[" + b", ".join(json.dumps({"text": t}).encode() for t in GOOD[:10]) + b', {"text": "')
        write_big(f, BIG, b"\\")  # escaped backslashes: the string never ends early
        f.write(b'"}, ' + b", ".join(json.dumps({"text": t}).encode() for t in GOOD[10:]) + b"]")
    report = prepare(tmp_path, [path])
    assert_one_skipped(tmp_path, report, path, 11, BIG + len(b'{"text": ""}'))  # rows: record numbers
    rows = {r["text"]: r["row"] for split in load_prepared(tmp_path / "out").values() for r in split}
    assert rows[GOOD[0]] == 1 and rows[GOOD[10]] == 12


def test_json_array_without_its_end_names_the_file(tmp_path):
    from lm_tasks.data.sources import DataSourceError

    path = tmp_path / "input.json"
    path.write_text("[" + ", ".join(json.dumps({"text": t}) for t in GOOD) + ",\n")
    with pytest.raises(DataSourceError, match=r"input.json:2: the JSON array does not end"):
        prepare(tmp_path, [path])


def test_csv_field_that_never_closes_its_quote_is_skipped(tmp_path):
    path = tmp_path / "input.csv"
    with open(path, "wb") as f:
        f.write(b"id,text\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(GOOD[:10])).encode())
        f.write(b'10,"an open quote\n')  # line 12: a quoted field running over 20 MB of 1 kB lines
        write_big(f, BIG, b"x" * 1023 + b"\n")
        f.write(b'"\n' + "".join(f'{i},"{t}"\n' for i, t in enumerate(GOOD[10:], 11)).encode())
    report = prepare(tmp_path, [path])
    assert_one_skipped(tmp_path, report, path, 12, len(b'10,"an open quote\n') + BIG + 2)
    rows = {r["text"]: r["row"] for split in load_prepared(tmp_path / "out").values() for r in split}
    assert rows[GOOD[10]] == 12 + 1 + BIG // 1024 + 1  # lines after the skipped record keep their numbers


def test_parquet_cell_too_long_is_skipped(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "input.parquet"
    texts = GOOD[:10] + ["a" * (2 * LIMIT)] + GOOD[10:]
    pq.write_table(pa.table({"text": texts}), path)
    report = prepare(tmp_path, [path])
    assert_one_skipped(tmp_path, report, path, 10, 2 * LIMIT)


def test_every_record_oversized_names_the_cause(tmp_path):
    path = tmp_path / "input.txt"
    with open(path, "wb") as f:
        write_big(f, 3 * LIMIT)
    with pytest.raises(EmptyDataError, match=r"Every record of the train data .* longer than "
                                             r"data.max_record_bytes=1048576 \(1 skipped: .*input.txt:1 "):
        prepare(tmp_path, [path])
    assert not (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.slow
def test_a_2_gb_single_line_file_is_skipped_with_peak_memory_under_1_gb(tmp_path):
    """The data stage in a subprocess of its own on a file with a 2 GB line (the default
    record limit); its peak resident memory (VmHWM) stays under 1 GB.
    LM_TASKS_HUGE_LINE_BYTES sets the line's size (default 2 GiB)."""
    size = int(os.environ.get("LM_TASKS_HUGE_LINE_BYTES", 2 << 30))
    path = tmp_path / "huge.txt"
    try:
        with open(path, "wb") as f:
            f.write("\n\n".join(GOOD).encode() + b"\n\n")
            write_big(f, size)
        script = textwrap.dedent(f"""
            import json
            from lm_tasks.config import load_config
            from lm_tasks.data.prepare import prepare_data
            cfg = load_config(["data=local", "data.files=[{path}]"]).data
            report = prepare_data(cfg, {str(tmp_path / "out")!r}, seed=0)
            peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
            print(json.dumps({{"read": report["steps"]["train"][0], "peak_kb": int(peak.split()[1])}}))
        """)
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        path.unlink(missing_ok=True)
    assert result["read"]["dropped"] == {"oversized_record": 1}
    assert result["read"]["dropped_bytes"] == {"oversized_record": size}
    assert result["read"]["rows_out"] == len(GOOD)
    print(f"peak RSS reading a {size:,} B line: {result['peak_kb'] / 1024:.0f} MiB")
    assert result["peak_kb"] < 1 << 20, f"peak RSS {result['peak_kb']:,} kB"
