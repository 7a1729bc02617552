"""The LM and a classifier logged as MLflow pyfunc models from code (nothing pickled), registered,
and loaded back by a fresh process outside the repository: its predictions equal the library's
in-process ones, and requests past the logged limits are refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from datasets import Dataset
from mlflow.exceptions import MlflowException

from lm_tasks import tracking
from lm_tasks.config import load_config
from lm_tasks.models.gpt import GPT, GPTConfig
from lm_tasks.models.io import load_pretrained, save_pretrained
from lm_tasks.serving import RequestLimitError, log_model
from lm_tasks.tasks.classification import ClassificationAdapter
from lm_tasks.tokenizer import load_tokenizer, special_token_ids, train_tokenizer
from lm_tasks.training.finetune import FinetuneModule, save_task_model
from tests.text_samples import paragraphs

pytestmark = pytest.mark.slow

PROMPTS = ["hello world", "a"]
TEXTS = ["river mountain quiet letter", "Garden window.", "harbor violet thunder meadow pocket ribbon candle"]

# Loads the registered model the way a serving process would, from outside the repository,
# runs each request (inputs, params) on it, and reports where lm_tasks was imported from (the
# model's code/ folder, not a checkout). No pickle may be read: MLflow is told to refuse them.
LOAD_AND_PREDICT = """
import json, sys, mlflow, pandas
model = mlflow.pyfunc.load_model({uri!r})
answers = []
for inputs, params in {requests!r}:
    try:
        out = model.predict(pandas.DataFrame({{{column!r}: inputs}}), params=params)
        answers.append({{"rows": out.to_dict(orient="records")}})
    except Exception as err:
        answers.append({{"error": type(err).__name__ + ": " + str(err)}})
import lm_tasks
print(json.dumps({{"answers": answers, "lm_tasks": lm_tasks.__file__}}))
"""

# Small limits, so that the tests can go past each of them.
LIMITS = ["serving.max_inputs=3", "serving.max_new_tokens=10", "serving.max_input_chars=60"]


def tracked(tmp_path: Path):
    cfg = load_config([f"paths.root_dir={tmp_path}", "finetune=classification", "tokenizer.vocab_size=400",
                       *LIMITS])
    experiment_id = tracking.configure(cfg.tracking)
    return cfg, experiment_id


def tiny_lm(tmp_path: Path, cfg) -> Path:
    """A random small GPT with a tokenizer trained on a few hundred sentences, exported."""
    tok_path = tmp_path / "tok" / "tokenizer.json"
    tokenizer = train_tokenizer(Dataset.from_dict({"text": paragraphs(300)}), cfg.tokenizer, tok_path)
    ids = special_token_ids(tokenizer, cfg.tokenizer)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=ids.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=64,
                          eos_id=ids.eos_id, pad_id=ids.pad_id))
    return save_pretrained(model, tmp_path / "pretrained", tok_path)


def predict_in_fresh_process(tmp_path: Path, cfg, uri: str, column: str, requests: list) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["MLFLOW_TRACKING_URI"] = cfg.tracking.tracking_uri
    env["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"
    env["CUDA_VISIBLE_DEVICES"] = ""  # on the CPU like the reference computed here, for exact equality
    code = LOAD_AND_PREDICT.format(uri=uri, column=column, requests=requests)
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # lm_tasks came with the model (code_paths), not from this checkout.
    assert "/code/lm_tasks/" in result["lm_tasks"] and not result["lm_tasks"].startswith(str(Path.cwd())), result
    return result["answers"]


def assert_logged_from_code(model_uri: str, tmp_path: Path) -> None:
    """The logged model holds code, weights and JSON: no pickled Python object."""
    local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp_path / "downloaded")))
    assert (local / "MLmodel").is_file() and (local / "serving_model.py").is_file()
    assert not (local / "python_model.pkl").exists()
    assert not [f for f in local.rglob("*") if f.suffix in (".pkl", ".pickle")]


def test_language_model_served_from_the_registry(tmp_path):
    cfg, experiment_id = tracked(tmp_path)
    model_dir = tiny_lm(tmp_path, cfg)
    with mlflow.start_run(experiment_id=experiment_id):
        info = log_model(model_dir, cfg.serving, registered_model_name="tiny-lm")
    assert info.registered_model_version == 1
    params = {p.name: p.default for p in info.signature.params.params}
    assert params == {"max_new_tokens": 10, "temperature": 0.0, "top_k": None, "top_p": None, "seed": None}
    assert_logged_from_code(info.model_uri, tmp_path)

    answers = predict_in_fresh_process(tmp_path, cfg, "models:/tiny-lm/1", "prompt", [
        (PROMPTS, {"max_new_tokens": 5}),
        (["a", "b", "c", "d"], {"max_new_tokens": 5}),  # one prompt too many
        (PROMPTS, {"max_new_tokens": 11}),
        (["x" * 61], {"max_new_tokens": 5}),
    ])
    rows = answers[0]["rows"]
    assert [a["error"] for a in answers[1:]] == [
        "RequestLimitError: 4 prompts in one request; this model takes at most 3 (split the request, or load "
        "the model with a larger model_config={'max_inputs': ...})",
        "RequestLimitError: max_new_tokens=11; this model generates between 0 and 10 tokens (load it with a "
        "larger model_config={'max_new_tokens': ...} to allow more)",
        "RequestLimitError: A prompt of 61 characters; this model takes at most 60 (split the request, or "
        "load the model with a larger model_config={'max_input_chars': ...})",
    ]

    # Greedy decoding in this process, prompt by prompt.
    model, tokenizer = load_pretrained(model_dir), load_tokenizer(model_dir / "tokenizer.json")
    expected = []
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt, add_special_tokens=False).ids
        out = model.generate(torch.tensor([ids]), 5, temperature=0, eos_id=model.config.eos_id)
        expected.append(tokenizer.decode(out[0, len(ids):].tolist()))
    assert [r["prompt"] for r in rows] == PROMPTS
    assert [r["generation"] for r in rows] == expected
    assert any(expected), "the random model generated nothing decodable; the comparison would be vacuous"

    # The loaded model also takes a plain list; a seed makes sampling reproducible.
    served = mlflow.pyfunc.load_model(info.model_uri)
    sample = {"max_new_tokens": 8, "temperature": 1.0, "top_k": 50, "seed": 3}
    first, again = served.predict(PROMPTS, params=sample), served.predict(PROMPTS, params=sample)
    assert first.equals(again) and first["prompt"].tolist() == PROMPTS
    with pytest.raises(MlflowException) as err:  # an HTTP 400 from the scoring server
        served.predict(PROMPTS, params={"max_new_tokens": 10**9})
    assert isinstance(err.value, RequestLimitError) and err.value.get_http_status_code() == 400

    # A deployment can change the limits when it loads the model.
    roomier = mlflow.pyfunc.load_model(info.model_uri, model_config={"max_inputs": 4, "max_new_tokens": 12})
    assert len(roomier.predict(["a", "b", "c", "d"], params={"max_new_tokens": 12})) == 4


def test_classifier_served_from_the_registry(tmp_path):
    cfg, experiment_id = tracked(tmp_path)
    pretrained = tiny_lm(tmp_path, cfg)
    # A task folder exactly as fine-tuning exports it; the head's random weights scaled up so
    # the labels differ between texts.
    model = load_pretrained(pretrained)
    adapter = ClassificationAdapter(["negative", "neutral", "positive"], "last", 16, model.config.pad_id)
    module = FinetuneModule(model, adapter, cfg.finetune["classification"])
    torch.manual_seed(1)
    torch.nn.init.normal_(module.head.out.weight, std=0.2)
    module.eval()
    save_task_model(module, adapter, tmp_path / "task" / "model", pretrained / "tokenizer.json")

    with mlflow.start_run(experiment_id=experiment_id):
        info = log_model(tmp_path / "task" / "model", cfg.serving, registered_model_name="tiny-classifier")
    assert info.registered_model_version == 1
    assert_logged_from_code(info.model_uri, tmp_path)

    answers = predict_in_fresh_process(tmp_path, cfg, "models:/tiny-classifier/1", "text", [
        (TEXTS, None), (TEXTS + ["one too many"], None)])
    rows = answers[0]["rows"]
    assert answers[1]["error"].startswith("RequestLimitError: 4 texts in one request; this model takes at most 3")

    tokenizer = load_tokenizer(pretrained / "tokenizer.json")
    encoded, _ = adapter.encode(Dataset.from_dict({"text": TEXTS, "label": [0] * len(TEXTS)}), tokenizer)
    with torch.no_grad():
        batch = adapter.collate(list(encoded))
        expected = adapter.predict(module.model, module.head, batch)
        probs = torch.softmax(adapter.logits(module.model, module.head, batch), dim=-1)
    assert len(rows) == len(TEXTS)
    assert len({row["label"] for row in rows}) > 1
    for row, want, p in zip(rows, expected, probs.tolist()):
        assert row["label"] == want["label"] and row["label"] in adapter.label_names
        assert 0.0 <= row["score"] <= 1.0 and row["score"] == pytest.approx(want["score"], abs=1e-5)
        assert [row[f"score_{name}"] for name in adapter.label_names] == pytest.approx(p, abs=1e-5)


def test_other_tasks_are_not_served(tmp_path):
    folder = tmp_path / "qa"
    folder.mkdir()
    (folder / "task.json").write_text(json.dumps({"task": "qa", "max_length": 32}))
    with pytest.raises(NotImplementedError, match="qa"):
        log_model(folder, load_config([]).serving)
