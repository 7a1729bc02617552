"""The trained models as MLflow pyfunc models: loadable anywhere MLflow is, servable with
`mlflow models serve`.

    LanguageModel    an exported LM folder (config.json, model.safetensors, tokenizer.json):
                     prompts -> DataFrame[prompt, generation] (the new text only)
    TaskClassifier   a fine-tuned classification folder (the above + head.safetensors, task.json):
                     texts -> DataFrame[label, score, score_<label>...]

`log_model(model_dir, limits)` picks the right one and logs it from code (`serving_model.py`,
MLflow's "models from code": no pickled object in the model), with the folder as its artifact
and the `lm_tasks` package as code, so a process without this repository can load and run it:

    info = log_model(out / "model", cfg.serving, registered_model_name="tiny-lm")  # in a run
    mlflow.pyfunc.load_model("models:/tiny-lm/1").predict(["Once upon a time"],
                                                           params={"max_new_tokens": 20})

A served model answers anyone who can reach it, so each request is bounded by the limits
logged in its model_config (`serving.*`): prompts or texts per request, characters in each,
and max_new_tokens. A request past one fails with a RequestLimitError (HTTP 400 when served).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import torch
import torch.nn.functional as F
from datasets import Dataset
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.models.model import ModelInfo
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types.schema import ParamSchema, ParamSpec
from safetensors.torch import load_model as load_weights

from lm_tasks.config import ServingConfig
from lm_tasks.models.io import load_pretrained
from lm_tasks.tasks.classification import ClassificationAdapter
from lm_tasks.tokenizer import load_tokenizer

PACKAGE_DIR = Path(__file__).resolve().parent
MODEL_CODE = PACKAGE_DIR / "serving_model.py"

# What the pyfunc's environment needs. Listed, not inferred: MLflow's inference loads the
# model in a subprocess and can reach for the network. Importing lm_tasks (tokenizer,
# classification adapter) also pulls in datasets, hydra/omegaconf (config) and evaluate (metrics).
REQUIREMENTS = ("torch", "tokenizers", "safetensors", "numpy", "pandas", "mlflow",
                "datasets", "hydra-core", "omegaconf", "evaluate")

DEFAULT_MAX_NEW_TOKENS = 64
CLASSIFY_BATCH = 32  # texts per forward pass


def generation_params(max_new_tokens_limit: int) -> ParamSchema:
    """Generation parameters and their defaults; None switches the option off."""
    return ParamSchema([
        ParamSpec("max_new_tokens", "long", min(DEFAULT_MAX_NEW_TOKENS, max_new_tokens_limit)),
        ParamSpec("temperature", "double", 0.0),  # 0 = greedy
        ParamSpec("top_k", "long", None),
        ParamSpec("top_p", "double", None),
        ParamSpec("seed", "long", None),
    ])


class RequestLimitError(MlflowException):
    """A request past the served model's limits; the scoring server answers it with HTTP 400."""

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


def limits_from(model_config: dict) -> ServingConfig:
    """The request limits logged in the model's model_config (or given to load_model)."""
    return ServingConfig(**{key: int(model_config[key])
                            for key in ("max_inputs", "max_new_tokens", "max_input_chars")})


def check_inputs(values: list[str], what: str, limits: ServingConfig) -> None:
    fix = "(split the request, or load the model with a larger model_config={{'{key}': ...}})"
    if len(values) > limits.max_inputs:
        raise RequestLimitError(f"{len(values)} {what}s in one request; this model takes at most "
                                f"{limits.max_inputs} {fix.format(key='max_inputs')}")
    longest = max(values, key=len, default="")
    if len(longest) > limits.max_input_chars:
        raise RequestLimitError(f"A {what} of {len(longest)} characters; this model takes at most "
                                f"{limits.max_input_chars} {fix.format(key='max_input_chars')}")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def texts_from(model_input: Any, column: str) -> list[str]:
    """The strings to run on: a DataFrame's `column` (or its only column: MLflow turns a list of
    strings into a one-column frame), a list of strings, or one string."""
    if isinstance(model_input, pd.DataFrame):
        if column in model_input.columns:
            values = model_input[column].tolist()
        elif len(model_input.columns) == 1:
            values = model_input.iloc[:, 0].tolist()
        else:
            raise ValueError(f"Expected a '{column}' column, got columns {list(model_input.columns)}")
    elif isinstance(model_input, str):
        values = [model_input]
    else:
        values = list(model_input)
    bad = [v for v in values if not isinstance(v, str)]
    if bad:
        raise ValueError(f"Every {column} must be a string, got {type(bad[0]).__name__}: pass a DataFrame "
                         f"with a '{column}' column or a list of strings")
    return values


class LanguageModel(mlflow.pyfunc.PythonModel):
    """Continues prompts with a pretrained language model (any family)."""

    def load_context(self, context) -> None:
        model_dir = Path(context.artifacts["model"])
        self.limits = limits_from(context.model_config)
        self.device = default_device()
        self.model = load_pretrained(model_dir, device=self.device)
        self.tokenizer = load_tokenizer(model_dir / "tokenizer.json")

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        p = {spec.name: spec.default for spec in generation_params(self.limits.max_new_tokens).params}
        p.update({k: v for k, v in (params or {}).items() if v is not None})
        if not 0 <= int(p["max_new_tokens"]) <= self.limits.max_new_tokens:
            raise RequestLimitError(f"max_new_tokens={p['max_new_tokens']}; this model generates between 0 "
                                    f"and {self.limits.max_new_tokens} tokens (load it with a larger "
                                    "model_config={'max_new_tokens': ...} to allow more)")
        prompts = texts_from(model_input, "prompt")
        check_inputs(prompts, "prompt", self.limits)
        generator = None
        if p["seed"] is not None:
            generator = torch.Generator(self.device).manual_seed(int(p["seed"]))
        # One prompt at a time: prompts of different lengths need no padding or attention mask.
        generations = [self.generate(prompt, int(p["max_new_tokens"]), float(p["temperature"]),
                                     p["top_k"], p["top_p"], generator) for prompt in prompts]
        return pd.DataFrame({"prompt": prompts, "generation": generations})

    def generate(self, prompt: str, max_new_tokens: int, temperature: float, top_k: int | None,
                 top_p: float | None, generator: torch.Generator | None) -> str:
        eos_id = self.model.config.eos_id
        ids = self.tokenizer.encode(prompt, add_special_tokens=False).ids
        if not ids:  # an empty prompt starts a new document, which in pretraining follows an eos
            if eos_id is None:
                raise ValueError("Empty prompt, and the model has no eos token to start from")
            ids = [eos_id]
        idx = torch.tensor([ids], dtype=torch.long, device=self.device)
        out = self.model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                  eos_id=eos_id, generator=generator)
        new = out[0, len(ids):].tolist()
        if eos_id in new:  # the document ended: what follows is eos padding
            new = new[:new.index(eos_id)]
        return self.tokenizer.decode(new)


def load_task_model(model_dir: str | Path, device: str = "cpu"):
    """A fine-tuned classification folder -> (backbone, tokenizer, adapter, head), rebuilt from
    task.json the way the evaluate stage rebuilds them (without needing the task's config)."""
    model_dir = Path(model_dir)
    saved = json.loads((model_dir / "task.json").read_text())
    if saved["task"] != "classification":
        raise NotImplementedError(f"{model_dir} is a {saved['task']} model; only classification is served")
    model = load_pretrained(model_dir, device=device)
    tokenizer = load_tokenizer(model_dir / "tokenizer.json")
    adapter = ClassificationAdapter(saved["label_names"], saved["pooling"], saved["max_length"],
                                    model.config.pad_id)
    head = adapter.build_head(model)
    load_weights(head, str(model_dir / "head.safetensors"), device=device)
    return model, tokenizer, adapter, head.to(device).eval()


class TaskClassifier(mlflow.pyfunc.PythonModel):
    """Labels texts with a fine-tuned classification model."""

    def load_context(self, context) -> None:
        self.limits = limits_from(context.model_config)
        self.device = default_device()
        self.model, self.tokenizer, self.adapter, self.head = load_task_model(context.artifacts["model"],
                                                                              self.device)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        texts = texts_from(model_input, "text")
        check_inputs(texts, "text", self.limits)
        names = self.adapter.label_names
        # The adapter's own encoding (truncation to max_length) and batching; labels are unused.
        encoded, _ = self.adapter.encode(Dataset.from_dict({"text": texts, "label": [0] * len(texts)}),
                                         self.tokenizer)
        probs = []
        with torch.no_grad():
            for start in range(0, len(encoded), CLASSIFY_BATCH):
                batch = self.adapter.collate(encoded.select(range(start, min(start + CLASSIFY_BATCH, len(texts)))))
                batch = {k: v.to(self.device) for k, v in batch.items()}
                # The softmax of ClassificationAdapter.predict, kept for every label.
                probs.append(F.softmax(self.adapter.logits(self.model, self.head, batch).float(), dim=-1).cpu())
        probs = torch.cat(probs) if probs else torch.zeros(0, len(names))
        scores, ids = probs.max(dim=-1)
        out = pd.DataFrame({"label": [names[i] for i in ids.tolist()], "score": scores.tolist()})
        for j, name in enumerate(names):
            out[f"score_{name}"] = probs[:, j].tolist()
        return out


# What serving_model.py builds for each task recorded in the model_config.
SERVED = {"lm": LanguageModel, "classification": TaskClassifier}


def model_task(model_dir: Path) -> str:
    """`lm` for an exported LM folder, else the task recorded in task.json."""
    task_file = model_dir / "task.json"
    return json.loads(task_file.read_text())["task"] if task_file.is_file() else "lm"


def pip_requirements() -> list[str]:
    """The installed versions of REQUIREMENTS, without local labels (2.5.1+cpu -> 2.5.1) so
    pip can resolve them from PyPI."""
    pins = []
    for name in REQUIREMENTS:
        try:
            pins.append(f"{name}=={re.sub(r'[+].*$', '', version(name))}")
        except PackageNotFoundError:
            pins.append(name)
    return pins


def log_model(model_dir: str | Path, limits: ServingConfig, name: str = "model",
              registered_model_name: str | None = None, task: str | None = None) -> ModelInfo:
    """Log the folder as a pyfunc model `name` of the active run, bounding each request by
    `limits`; register it as a new version of `registered_model_name` when given.

    `task` ("lm", "classification") defaults to what the folder is: task.json's task, else lm.
    """
    model_dir = Path(model_dir).resolve()
    found = model_task(model_dir)
    task = task or found
    if task != found:
        raise ValueError(f"task={task!r} but {model_dir} holds a {found!r} model")
    if task == "lm":
        example = ["Once upon a time"]
        # The output example only gives the schema its columns and types; no model is run here.
        signature = infer_signature(example, pd.DataFrame({"prompt": example, "generation": [" there"]}))
        signature.params = generation_params(limits.max_new_tokens)
    elif task == "classification":
        labels = json.loads((model_dir / "task.json").read_text())["label_names"]
        example = ["A short text to classify."]
        output = pd.DataFrame({"label": [labels[0]], "score": [1.0],
                               **{f"score_{label}": [float(i == 0)] for i, label in enumerate(labels)}})
        signature = infer_signature(example, output)
    else:
        raise NotImplementedError(f"Serving {task} models is not implemented; "
                                  "log_model handles the LM and classification models")
    # The input schema is one unnamed string column: MLflow then accepts a list of strings as
    # well as a DataFrame with a `prompt`/`text` column (a named column would reject lists).
    return mlflow.pyfunc.log_model(
        name=name, python_model=str(MODEL_CODE), model_config={"task": task, **asdict(limits)},
        artifacts={"model": str(model_dir)},
        code_paths=[str(PACKAGE_DIR)],  # lm_tasks/ lands on the loader's sys.path
        signature=signature, input_example=example, pip_requirements=pip_requirements(),
        registered_model_name=registered_model_name, metadata={"lm_tasks_task": task},
    )
