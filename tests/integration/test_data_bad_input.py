"""Every bad input the data stage meets ends in a clear error naming the file (and line),
or in a documented treatment that the data report counts; never in a silent empty split.
A tokenizer trained on what is kept round-trips every kept row exactly."""

from __future__ import annotations

import codecs
import json
import random
import unicodedata

import pytest

from lm_tasks.config import load_config
from lm_tasks.data.prepare import load_prepared, prepare_data
from lm_tasks.data.sources import DataSourceError, EmptyDataError
from lm_tasks.tokenizer import train_tokenizer
from tests.text_samples import paragraphs

GOOD = paragraphs(40)


def run(tmp_path, content: bytes | str, name: str = "input.txt", *overrides: str) -> dict:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    cfg = load_config(["data=local", f"data.files=[{path}]", *overrides]).data
    return prepare_data(cfg, tmp_path / "out", seed=0)


def kept_texts(tmp_path) -> list[str]:
    dataset = load_prepared(tmp_path / "out")
    return list(dataset["train"]["text"]) + list(dataset["validation"]["text"])


def step(report: dict, name: str, split: str = "train") -> dict:
    return next(s for s in report["steps"][split] if s["step"] == name)


def good_text() -> str:
    return "\n\n".join(GOOD)


# --- errors that name the file ---------------------------------------------------------


def test_empty_file(tmp_path):
    with pytest.raises(EmptyDataError, match=r"train data from source 'local' is empty: .*input.txt"):
        run(tmp_path, b"")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_whitespace_only_file(tmp_path):
    with pytest.raises(EmptyDataError, match=r"is empty: .*input.txt"):
        run(tmp_path, " \n\t\n\r\n   \n")


def test_glob_matching_nothing(tmp_path):
    cfg = load_config(["data=local", f"data.files=[{tmp_path}/missing-*.jsonl]"]).data
    with pytest.raises(DataSourceError, match=r"data.files: no file matches '.*missing-\*.jsonl'"):
        prepare_data(cfg, tmp_path / "out", 0)


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    lines = [json.dumps({"text": t}) for t in GOOD[:5]] + ['{"text": "unterminated'] + [json.dumps({"text": GOOD[5]})]
    with pytest.raises(DataSourceError, match=r"input.jsonl:6: not valid JSON"):
        run(tmp_path, "\n".join(lines), "input.jsonl")


def test_jsonl_record_without_the_text_field(tmp_path):
    lines = [json.dumps({"text": t}) for t in GOOD[:3]] + [json.dumps({"body": "x"})]
    with pytest.raises(DataSourceError, match=r"input.jsonl line 4 has no column 'text' \(columns: \['body'\]\)"):
        run(tmp_path, "\n".join(lines), "input.jsonl")


def test_parquet_without_the_text_column(tmp_path):
    import pandas as pd

    pd.DataFrame({"body": GOOD}).to_parquet(tmp_path / "input.parquet")
    cfg = load_config(["data=local", f"data.files=[{tmp_path}/input.parquet]"]).data
    with pytest.raises(DataSourceError, match=r"input.parquet has no column 'text' \(columns: \['body'\]\).*text_column"):
        prepare_data(cfg, tmp_path / "out", 0)


def test_everything_filtered_names_the_steps_and_reasons(tmp_path):
    with pytest.raises(EmptyDataError, match=r"removed every row of the train data \(read 3 -> 3, normalize 3 -> 3, "
                                             r"length 3 -> 0.*too_short"):
        run(tmp_path, "tiny\n\nsmall\n\nshort")


# --- documented, counted treatments ----------------------------------------------------


def test_binary_content_and_nul_bytes_are_dropped_and_counted(tmp_path):
    noise = random.Random(1).randbytes(3000)
    content = good_text().encode() + b"\n\n" + noise + b"\n\nA line with a NUL\x00 byte in the middle of ordinary words.\n"
    report = run(tmp_path, content)
    kept = kept_texts(tmp_path)
    assert "A line with a NUL byte in the middle of ordinary words." in kept
    assert not any("\x00" in t or "\ufffd" in t for t in kept)
    assert set(GOOD) <= set(kept) and len(kept) == len(GOOD) + 1  # the noise went, nothing else
    normalize = step(report, "normalize")
    assert normalize["details"]["invalid_utf8_rows"] >= 1
    dropped = {reason for s in report["steps"]["train"] for reason in s["dropped"]}
    assert dropped and dropped <= {"too_short", "too_long", "min_alpha_word_fraction", "max_symbol_word_ratio",
                                   "max_mean_word_length", "min_mean_word_length"}


def test_invalid_utf8_bytes_are_removed_and_counted(tmp_path):
    report = run(tmp_path, good_text().encode() + b"\n\nCaf\xe9 au lait and a stray \xff\xfe byte pair here.\n")
    assert "Caf au lait and a stray  byte pair here." in kept_texts(tmp_path)
    assert step(report, "normalize")["details"]["invalid_utf8_rows"] == 1


def test_a_single_50_mb_line_is_skipped_while_reading(tmp_path):
    line = ("word " * 10_000_000).encode()  # 50 MB, no line break: over the 16 MiB default record limit
    report = run(tmp_path, good_text().encode() + b"\n\n" + line)
    assert step(report, "read")["dropped"] == {"oversized_record": 1}
    assert step(report, "read")["dropped_bytes"] == {"oversized_record": len(line)}
    assert step(report, "length")["dropped"] == {}
    assert sorted(kept_texts(tmp_path)) == sorted(GOOD)


def test_a_long_line_within_the_record_limit_is_dropped_as_too_long(tmp_path):
    line = ("word " * 200_000).encode()  # 1 MB: read, then too long for cleaning.max_chars
    report = run(tmp_path, good_text().encode() + b"\n\n" + line)
    assert step(report, "read")["dropped"] == {}
    assert step(report, "length")["dropped"] == {"too_long": 1}


@pytest.mark.parametrize("newline", ["\r\n", "\r", "\u2028"])
def test_line_endings(tmp_path, newline):
    first = f"Line one of the verse{newline}line two of the verse{newline}line three ends it."
    content = newline.join([first, "", good_text().replace("\n", newline)]) if newline != "\u2028" else \
        first + "\n\n" + good_text()
    run(tmp_path, content)
    assert "Line one of the verse\nline two of the verse\nline three ends it." in kept_texts(tmp_path)


def test_bom_is_removed(tmp_path):
    run(tmp_path, "\ufeff" + good_text())
    assert sorted(kept_texts(tmp_path)) == sorted(GOOD)


# --- layouts, encodings, compression and formats (lm_tasks/data/opening.py) ---------------


def texts_of(tmp_path, name: str, content: bytes, *overrides: str) -> list[str]:
    """The sorted kept texts of one file, read in its own folder."""
    folder = tmp_path / f"read-{name}"
    folder.mkdir()
    run(folder, content, name, *overrides)
    return sorted(kept_texts(folder))


def test_txt_without_blank_lines_is_read_a_record_per_line_and_says_so(tmp_path, caplog):
    one_per_line = "\n".join(GOOD).encode()
    with caplog.at_level("WARNING"):
        assert texts_of(tmp_path, "lines.txt", one_per_line) == sorted(GOOD)
    assert "lines.txt has no blank line in its first 40 lines: read one record per line" in caplog.text
    with pytest.raises(EmptyDataError, match="Only 1 row is left"):  # asked for paragraphs: one of 40 lines
        run(tmp_path, one_per_line, "para.txt", "data.txt_sample_by=paragraph", "data.cleaning.max_chars=100000")


@pytest.mark.parametrize("encoding,bom", [("utf-16-le", codecs.BOM_UTF16_LE), ("utf-16-be", codecs.BOM_UTF16_BE),
                                          ("utf-32-le", codecs.BOM_UTF32_LE), ("utf-32-be", codecs.BOM_UTF32_BE)])
def test_utf16_and_utf32_text_is_transcoded_by_its_byte_order_mark(tmp_path, encoding, bom):
    text = good_text() + "\n\nDéjà vu at the café 👍, one more paragraph of the test."
    expected = texts_of(tmp_path, "utf8.txt", text.encode())
    assert texts_of(tmp_path, "wide.txt", bom + text.encode(encoding)) == expected
    assert len(expected) == len(GOOD) + 1
    rows = "\n".join(json.dumps({"text": t}) for t in GOOD)
    assert texts_of(tmp_path, "wide.jsonl", bom + rows.encode(encoding)) == sorted(GOOD)


@pytest.mark.parametrize("name", ["corpus.txt.gz", "corpus.jsonl.gz", "corpus.txt.zst", "corpus.csv.zst"])
def test_compressed_files_are_read_by_their_extension(tmp_path, name):
    import gzip

    import zstandard

    kind = name.split(".")[1]
    plain = {"txt": good_text(), "jsonl": "\n".join(json.dumps({"text": t}) for t in GOOD),
             "csv": "text\n" + "\n".join(f'"{t}"' for t in GOOD)}[kind].encode()
    packed = gzip.compress(plain) if name.endswith(".gz") else zstandard.ZstdCompressor().compress(plain)
    assert texts_of(tmp_path, name, packed) == sorted(GOOD)


def test_a_corrupt_compressed_file_is_named(tmp_path):
    with pytest.raises(DataSourceError, match=r"broken.txt.gz: cannot decompress it \(BadGzipFile"):
        run(tmp_path, b"this was never gzip", "broken.txt.gz")
    with pytest.raises(DataSourceError, match=r"cut.txt.zst: cannot decompress it"):
        import zstandard

        run(tmp_path, zstandard.ZstdCompressor().compress(good_text().encode())[:-20], "cut.txt.zst")


def test_a_compressed_parquet_file_is_refused_with_the_reason(tmp_path):
    with pytest.raises(DataSourceError, match=r"data.parquet.gz: parquet compresses its own columns"):
        run(tmp_path, b"PAR1", "data.parquet.gz")


@pytest.mark.parametrize("name", ["wiki.train.raw", "wiki.train.tokens", "CORPUS"])
def test_plain_text_under_another_extension_reads_with_the_format_key(tmp_path, name):
    named = "extension '.raw'" if name.endswith(".raw") else "extension '.tokens'" if name.endswith("s") \
        else "no extension"
    with pytest.raises(DataSourceError, match=rf"{name} has {named}, which names no format; set data.format to txt"):
        run(tmp_path, good_text(), name)
    assert texts_of(tmp_path, name, good_text().encode(), "data.format=txt") == sorted(GOOD)


def test_nfc_and_nfd_forms_become_one_text(tmp_path):
    text = "Déjà vu at the café, a naïve façade of the crème brûlée menu."
    content = "\n\n".join([unicodedata.normalize("NFC", text), unicodedata.normalize("NFD", text), good_text()])
    report = run(tmp_path, content)
    kept = kept_texts(tmp_path)
    assert kept.count(unicodedata.normalize("NFC", text)) == 1
    assert step(report, "exact_dedup")["dropped"] == {"duplicate": 1}


def test_zero_width_and_bidi_controls_are_removed(tmp_path):
    text = "Zero\u200bwidth space, \u202eright-to-left override\u202c and \u2066isolate\u2069 marks here."
    run(tmp_path, text + "\n\n" + good_text())
    assert "Zerowidth space, right-to-left override and isolate marks here." in kept_texts(tmp_path)


def test_emoji_sequences_survive_cleaning_and_tokenization(tmp_path):
    text = "Family 👩\u200d👩\u200d👧\u200d👦, flag 🇩🇪, thumbs 👍🏽 and keycap 1\ufe0f\u20e3 in one happy sentence."
    run(tmp_path, text + "\n\n" + good_text())
    kept = kept_texts(tmp_path)
    assert text in kept
    tokenizer = train_tokenizer(load_prepared(tmp_path / "out")["train"], load_config().tokenizer,
                                tmp_path / "tok.json")
    assert tokenizer.decode(tokenizer.encode(text).ids, skip_special_tokens=False) == text


def test_tokenizer_round_trips_every_kept_row(tmp_path):
    messy = ["Tabs\tand  double  spaces stay inside a line of this row.",
             "Ünïcödé, ελληνικά, русский, 日本語 and العربية in one row.",
             "Code: def f(x):\n    return x ** 2  # indented on purpose"]
    run(tmp_path, "\n\n".join(messy) + "\n\n" + good_text())
    dataset = load_prepared(tmp_path / "out")
    tokenizer = train_tokenizer(dataset["train"], load_config(["tokenizer.vocab_size=400"]).tokenizer,
                                tmp_path / "tok.json")
    for text in kept_texts(tmp_path):
        assert tokenizer.decode(tokenizer.encode(text).ids, skip_special_tokens=False) == text
