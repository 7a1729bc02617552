"""init_from a Hugging Face GPT-2 checkpoint: fine-tuning tasks running at once (Dask workers)
convert it once, and none reads a folder another is replacing."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from lm_tasks.config import load_config
from lm_tasks.models import hf
from lm_tasks.stages import _converted_gpt2


def test_concurrent_fine_tunings_convert_a_checkpoint_once(tmp_path, monkeypatch):
    calls = []

    def slow_conversion(origin, out):
        calls.append(origin)
        time.sleep(0.5)  # the other task asks meanwhile
        out.mkdir(parents=True)
        (out / "model.safetensors").write_bytes(b"weights")
        return out

    monkeypatch.setattr(hf, "load_gpt2", slow_conversion)
    cfg = load_config([f"paths.root_dir={tmp_path}"])
    with ThreadPoolExecutor(2) as pool:  # flock excludes threads as it does processes
        folders = list(pool.map(lambda _: _converted_gpt2(cfg, "hf:gpt2"), range(2)))
    assert calls == ["gpt2"] and folders[0] == folders[1]
    assert [p.name for p in folders[0].parent.iterdir()] == [folders[0].name]  # no lock file left behind
