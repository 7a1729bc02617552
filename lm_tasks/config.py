"""The one place configuration enters the code.

`load_config(overrides)` composes `conf/lifecycle.yaml` with Hydra's Compose API
(no working-directory change), validates the result against the dataclasses
below and returns a typed `LifecycleConfig`. The YAML files hold the defaults;
the dataclasses hold the types and the checks. Library functions receive these
typed sections, never a raw DictConfig.
"""

from __future__ import annotations

import difflib
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from hydra.initialize import get_gh_backup, restore_gh_from_backup
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lm_tasks.redaction import redact, remember

CONF_DIR = Path(os.environ.get("LM_TASKS_CONF_DIR", Path(__file__).resolve().parent.parent / "conf"))
ENTRY_CONFIG = "lifecycle"

OmegaConf.register_new_resolver("cwd", os.getcwd, replace=True)


class ConfigError(ValueError):
    """A configuration that cannot be composed or does not validate."""


@dataclass
class PathsConfig:
    root_dir: str
    output_dir: str
    data_dir: str
    tokenizer_dir: str
    pretrain_dir: str
    eval_dir: str
    finetune_dir: str


@dataclass
class QualityConfig:
    """Heuristic document filters (lm_tasks/data/quality.py); null turns a rule off."""

    min_words: Optional[float]
    max_words: Optional[float]
    min_mean_word_length: Optional[float]
    max_mean_word_length: Optional[float]
    max_symbol_word_ratio: Optional[float]
    min_alpha_word_fraction: Optional[float]
    min_punctuation_line_fraction: Optional[float]
    max_duplicate_line_fraction: Optional[float]
    max_top_2gram_fraction: Optional[float]
    max_top_3gram_fraction: Optional[float]
    max_top_4gram_fraction: Optional[float]
    max_duplicate_5gram_fraction: Optional[float]


@dataclass
class NearDedupConfig:
    enabled: bool
    num_perm: int
    shingle_size: int
    threshold: float

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"data.cleaning.near_dedup.threshold must be in (0, 1), got {self.threshold} "
                              "(exact duplicates are data.cleaning.exact_dedup)")
        if self.num_perm < 2 or self.shingle_size < 1:
            raise ConfigError("data.cleaning.near_dedup needs num_perm >= 2 and shingle_size >= 1, "
                              f"got {self.num_perm} and {self.shingle_size}")


@dataclass
class DecontaminationConfig:
    enabled: bool
    ngram: int
    tasks: bool  # also the evaluation splits of the selected fine-tuning tasks

    def __post_init__(self) -> None:
        if self.ngram < 1:
            raise ConfigError(f"data.cleaning.decontamination.ngram must be >= 1, got {self.ngram}")


@dataclass
class MixConfig:
    """Domain-adaptive pretraining: how often each row of the training split appears, by where it came from."""

    corpus: float = 1.0  # the configured source (embedded, hub or local files)
    tasks: float = 0.0  # the training text of the selected fine-tuning tasks (0: not used)

    def __post_init__(self) -> None:
        for key in ("corpus", "tasks"):
            if getattr(self, key) < 0:
                raise ConfigError(f"data.mix.{key} must be >= 0, got {getattr(self, key)}")
        if self.corpus == 0 and self.tasks == 0:
            raise ConfigError("data.mix.corpus and data.mix.tasks are both 0: nothing is left to pretrain on")


@dataclass
class CleaningConfig:
    name: str
    unicode_form: str
    pii: List[str]
    min_chars: int
    max_chars: int
    quality: QualityConfig
    languages: Optional[List[str]]
    exact_dedup: bool
    near_dedup: NearDedupConfig
    decontamination: DecontaminationConfig
    dropped_samples: int

    def __post_init__(self) -> None:
        _check_choice("data.cleaning.unicode_form", self.unicode_form, ("NFC", "NFKC", "none"))
        from lm_tasks.data.language import LANGUAGES
        from lm_tasks.data.pii import KINDS

        for kind in self.pii:
            _check_choice("data.cleaning.pii", kind, KINDS)
        for language in self.languages or []:
            _check_choice("data.cleaning.languages", language, LANGUAGES)
        if self.min_chars < 0 or self.max_chars < max(self.min_chars, 1):
            raise ConfigError(
                f"data.cleaning: need 0 <= min_chars <= max_chars and max_chars >= 1, "
                f"got min_chars={self.min_chars}, max_chars={self.max_chars}"
            )


DATA_FORMATS = ("txt", "jsonl", "json", "csv", "parquet")  # the local-file readers (lm_tasks/data/opening.py)


@dataclass
class DataConfig:
    name: str
    source: str
    hub_name: Optional[str]
    hub_config: Optional[str]
    hub_revision: Optional[str]
    files: List[str]
    validation_files: List[str]
    text_column: str
    txt_sample_by: str
    train_split: str
    validation_split: Optional[str]
    val_ratio: float
    max_rows: Optional[int]
    max_bytes: Optional[int]
    max_record_bytes: int
    streaming: bool
    shard_rows: int
    num_proc: int
    cleaning: CleaningConfig
    executor: str = "local"  # local: num_proc processes here | dask: partitioned over a Dask cluster
    dask_address: Optional[str] = None  # (executor=dask) scheduler address; null: the cluster this runs on, or a local one
    partitions: Optional[int] = None  # (executor=dask) row ranges per pass; null: 2 per worker
    mix: MixConfig = field(default_factory=MixConfig)
    format: str = "auto"  # local files: auto (by extension, under .gz / .zst) | txt | jsonl | json | csv | parquet
    license: Optional[str] = None  # the data's licence, for the model cards (null: the embedded corpus's, or "not stated")

    def __post_init__(self) -> None:
        _check_choice("data.source", self.source, ("embedded", "hub", "local"))
        _check_choice("data.format", self.format, ("auto", *DATA_FORMATS))
        _check_choice("data.executor", self.executor, ("local", "dask"))
        if self.partitions is not None and self.partitions < 1:
            raise ConfigError(f"data.partitions must be >= 1 or null, got {self.partitions}")
        _check_choice("data.txt_sample_by", self.txt_sample_by, ("auto", "line", "paragraph", "document"))
        if self.source == "local" and not self.files:
            raise ConfigError(
                "data=local needs files: pass data.files=[path/to/file.txt] "
                "(txt, jsonl, csv or parquet; globs allowed)"
            )
        if self.source == "hub" and not self.hub_name:
            raise ConfigError("data=hub needs a dataset name: pass data.hub_name=<owner/name>")
        if not 0.0 < self.val_ratio < 1.0:
            raise ConfigError(f"data.val_ratio must be between 0 and 1, got {self.val_ratio}")
        if self.num_proc < 1:
            raise ConfigError(f"data.num_proc must be >= 1, got {self.num_proc}")
        for key in ("max_rows", "max_bytes"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"data.{key} must be >= 1 or null, got {getattr(self, key)}")
        if self.max_record_bytes < 1:
            raise ConfigError(f"data.max_record_bytes must be >= 1, got {self.max_record_bytes}")
        if self.shard_rows < 1:
            raise ConfigError(f"data.shard_rows must be >= 1, got {self.shard_rows}")


@dataclass
class TokenizerConfig:
    name: str
    kind: str
    vocab_size: int
    min_frequency: int
    eos_token: str
    pad_token: str
    unk_token: str
    sep_token: str
    extra_special_tokens: List[str]

    def __post_init__(self) -> None:
        _check_choice("tokenizer.kind", self.kind, ("bpe", "wordpiece", "unigram"))
        if self.vocab_size < 260 and self.kind == "bpe":
            raise ConfigError(
                f"tokenizer.vocab_size={self.vocab_size} is below the 256 byte symbols "
                "plus special tokens that byte-level BPE needs"
            )

    @property
    def special_tokens(self) -> list[str]:
        tokens = [self.eos_token, self.pad_token, self.unk_token, self.sep_token, *self.extra_special_tokens]
        return list(dict.fromkeys(tokens))  # de-duplicated, order kept


# The models' options, named here so a config is checked without importing torch (the
# models import them from here; lm_tasks/models/io.py maps each family to its classes).
MODEL_FAMILIES = ("gpt", "rnn", "lstm", "gru", "ngram")
# gelu (exact erf form) | gelu_tanh (GPT-2's tanh approximation) | relu2 | swiglu (a gated MLP)
ACTIVATIONS = ("gelu", "gelu_tanh", "relu2", "swiglu")
POS_ENCODINGS = ("learned", "sinusoidal", "rotary")
NORMS = ("layernorm", "rmsnorm")


@dataclass
class ModelConfig:
    """The model family and its shape. Each family reads its own keys (lm_tasks/models/io.py);
    the others are ignored, so one debug or experiment file can shrink any family."""

    name: str
    family: str
    block_size: int  # training context; held-out text is scored in blocks of this length
    n_layer: Optional[int] = None
    n_embd: Optional[int] = None
    dropout: float = 0.0
    # gpt
    n_head: Optional[int] = None
    bias: bool = False
    pos_encoding: str = "learned"  # learned | sinusoidal | rotary
    norm: str = "layernorm"  # layernorm | rmsnorm
    activation: str = "gelu"  # the MLP: gelu | gelu_tanh | relu2 | swiglu (gated, three matrices)
    qk_norm: bool = False  # RMSNorm of each head's queries and keys
    logit_softcap: Optional[float] = None  # cap * tanh(logits / cap) on the output logits
    # rnn | lstm | gru (null: n_embd, and the output head is tied to the embedding)
    hidden_size: Optional[int] = None
    # ngram
    order: Optional[int] = None

    def __post_init__(self) -> None:
        _check_choice("model.family", self.family, MODEL_FAMILIES)
        needed = {"gpt": ("n_layer", "n_head", "n_embd"), "ngram": ("order",)}.get(self.family,
                                                                                   ("n_layer", "n_embd"))
        missing = [f"model.{key}" for key in needed if getattr(self, key) is None]
        if missing:
            raise ConfigError(f"model.family={self.family} needs {', '.join(missing)}")
        if self.family == "gpt":
            _check_choice("model.pos_encoding", self.pos_encoding, POS_ENCODINGS)
            _check_choice("model.norm", self.norm, NORMS)
            _check_choice("model.activation", self.activation, ACTIVATIONS)
            if self.logit_softcap is not None and not self.logit_softcap > 0:
                raise ConfigError(f"model.logit_softcap must be a positive number or null, got {self.logit_softcap}")
            if self.n_embd % self.n_head:
                raise ConfigError(
                    f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})"
                )
            if self.pos_encoding == "rotary" and (self.n_embd // self.n_head) % 2:
                raise ConfigError(f"model.pos_encoding=rotary needs an even head size (n_embd / n_head), got "
                                  f"{self.n_embd // self.n_head}")
        if self.family == "ngram" and self.order < 1:
            raise ConfigError(f"model.order must be >= 1, got {self.order}")

    @property
    def trainable(self) -> bool:
        """Trained by gradient descent (and so fine-tunable), or fitted by counting (ngram)."""
        return self.family != "ngram"


@dataclass
class TrainerConfig:
    name: str
    accelerator: str
    devices: Any
    strategy: str
    num_nodes: int
    precision: str
    max_steps: int
    max_minutes: Optional[float]
    global_batch_size: int
    micro_batch_size: Optional[int]
    gradient_clip_val: Optional[float]
    val_check_interval: int
    checkpoint_every_n_steps: int
    limit_val_batches: Any
    log_every_n_steps: int
    num_workers: int
    enable_progress_bar: bool
    compile: bool
    fsdp_sharding: str
    activation_checkpointing: bool
    launcher: str
    rdzv_endpoint: Optional[str]
    profiler: Optional[str] = None  # simple | advanced | pytorch: Lightning's profiler, report in profile/
    peak_tflops: Optional[float] = None  # per device, for train/mfu (null: Lightning's GPU table; none on CPU)

    def __post_init__(self) -> None:
        if self.profiler is not None:
            _check_choice("trainer.profiler", self.profiler, ("simple", "advanced", "pytorch"))
        for key in ("max_steps", "global_batch_size", "val_check_interval", "checkpoint_every_n_steps"):
            if getattr(self, key) < 1:
                raise ConfigError(f"trainer.{key} must be >= 1, got {getattr(self, key)}")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ConfigError(f"trainer.micro_batch_size must be >= 1 or null, got {self.micro_batch_size}")
        _check_choice("trainer.fsdp_sharding", self.fsdp_sharding,
                      ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD"))
        _check_choice("trainer.launcher", self.launcher, ("auto", "torchrun", "srun", "none"))


@dataclass
class OptimConfig:
    name: str
    lr: float
    min_lr: float
    weight_decay: float
    betas: List[float]
    eps: float
    warmup_steps: int
    fused: Optional[bool]
    schedule: str = "cosine"  # cosine | wsd (warmup, stable, then linear decay over decay_fraction)
    decay_fraction: float = 0.2  # (wsd) the share of the steps after warmup spent decaying
    muon_momentum: float = 0.95  # (name=muon)

    def __post_init__(self) -> None:
        _check_choice("optim.name", self.name, ("adamw", "muon"))
        _check_choice("optim.schedule", self.schedule, ("cosine", "wsd"))
        if not 0 < self.decay_fraction <= 1:
            raise ConfigError(f"optim.decay_fraction must be in (0, 1], got {self.decay_fraction}")
        if len(self.betas) != 2:
            raise ConfigError(f"optim.betas needs two values, got {list(self.betas)}")
        if not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"optim: need 0 <= min_lr <= lr, got min_lr={self.min_lr}, lr={self.lr}")


TASKS = ("classification", "qa", "summarization", "translation")
# The fields each task reads from its dataset (data.columns maps them to source columns).
TASK_FIELDS = {
    "classification": ("text", "label"),
    "qa": ("context", "question", "answers"),
    "summarization": ("source", "target"),
    "translation": ("source", "target"),
}


@dataclass
class TaskDataConfig:
    source: str
    hub_name: Optional[str]
    hub_config: Optional[str]
    train_files: List[str]
    validation_files: List[str]
    train_split: str
    validation_split: Optional[str]
    columns: Dict[str, str]
    label_names: Optional[List[str]]
    val_ratio: float
    split_by: Optional[str]
    max_rows: Optional[int]
    # The split the evaluate stage scores on (an official test split): validation then only
    # steers early stopping and the best checkpoint. Empty / null: scores on validation.
    test_files: List[str] = field(default_factory=list)
    test_split: Optional[str] = None
    license: Optional[str] = None  # the data's licence, for the model cards (null: the embedded sets', or "not stated")


@dataclass
class TaskConfig:
    task: str
    data: TaskDataConfig
    max_length: Optional[int]
    pooling: str
    batch_size: int
    max_steps: int
    max_minutes: Optional[float]
    val_check_interval: int
    patience: int
    lr: float
    min_lr: float
    warmup_steps: int
    weight_decay: float
    monitor: str
    num_beams: int
    max_new_tokens: int
    stride: int
    max_answer_tokens: int
    n_best: int
    allow_no_answer: bool
    cv_folds: Optional[int] = None  # k-fold cross-validation on the train split before the final model
    dropout: Optional[float] = None  # the backbone's and head's dropout while fine-tuning; None: the pretrained rate
    layer_lr_decay: float = 1.0  # each layer's lr is the one above times this (the head at lr); 1: one lr
    extractive: bool = False  # summarization: the source sentence the model scores most likely, not generated

    def __post_init__(self) -> None:
        _check_choice("finetune.<task>.task", self.task, TASKS)
        _check_choice(f"finetune.{self.task}.data.source", self.data.source, ("embedded", "hub", "local"))
        _check_choice(f"finetune.{self.task}.pooling", self.pooling, ("last", "mean"))
        missing = [f for f in TASK_FIELDS[self.task] if f not in self.data.columns]
        if missing:
            raise ConfigError(f"finetune.{self.task}.data.columns needs a column for {', '.join(missing)}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"finetune.{self.task}.dropout={self.dropout} must be in [0, 1) (null: the "
                              "pretrained model's rate)")
        if not 0.0 < self.layer_lr_decay <= 1.0:
            raise ConfigError(f"finetune.{self.task}.layer_lr_decay={self.layer_lr_decay} must be in (0, 1] "
                              "(1: every layer at finetune.<task>.lr)")
        if self.extractive and self.task != "summarization":
            raise ConfigError(f"finetune.{self.task}.extractive: extractive decoding picks a source sentence as "
                              "a summary; only summarization has it")
        if self.cv_folds is not None and self.cv_folds < 2:
            raise ConfigError(f"finetune.{self.task}.cv_folds={self.cv_folds}: cross-validation needs at least 2 "
                              "folds; set null to turn it off")

    @property
    def monitor_mode(self) -> str:
        return "min" if self.monitor == "loss" else "max"

    def optim(self) -> "OptimConfig":
        return OptimConfig(name="adamw", lr=self.lr, min_lr=self.min_lr, weight_decay=self.weight_decay,
                           betas=[0.9, 0.95], eps=1e-8, warmup_steps=self.warmup_steps, fused=None)


@dataclass
class CheckpointEvalConfig:
    enabled: bool = False  # evaluate pretraining checkpoints while training runs (lm_tasks/checkpoint_eval.py)
    every_n_steps: Optional[int] = None  # a weights snapshot every N steps (null: trainer.checkpoint_every_n_steps)
    threads: int = 1  # the evaluator process's torch threads: what it takes from training
    # local: a process beside the training; deployment: the evaluate-checkpoint deployment on a
    # worker, started by each checkpoint's Prefect event (prefect.yaml)
    evaluator: str = "local"
    probe: str = "none"  # sentiment: a linear probe of the hidden states on the embedded sentiment set

    def __post_init__(self) -> None:
        _check_choice("eval.checkpoints.evaluator", self.evaluator, ("local", "deployment"))
        _check_choice("eval.checkpoints.probe", self.probe, ("none", "sentiment"))
        for key in ("every_n_steps", "threads"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"eval.checkpoints.{key} must be >= 1, got {getattr(self, key)}")


@dataclass
class EvalConfig:
    batch_size: int  # held-out blocks or task examples per forward pass (results do not depend on it)
    max_batches: Optional[int]
    prompts: List[str]
    max_new_tokens: int
    temperature: float
    top_k: Optional[int]
    top_p: Optional[float]
    checkpoints: CheckpointEvalConfig = field(default_factory=CheckpointEvalConfig)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"eval.batch_size must be >= 1, got {self.batch_size}")


@dataclass
class TrackingConfig:
    tracking_uri: str
    artifact_location: Optional[str]
    experiment_name: str
    run_name: Optional[str]
    outage_patience_minutes: float = 30.0
    system_metrics: bool = True  # CPU, memory, GPU use of training runs as system/* metrics
    system_metrics_interval_s: float = 10.0


STAGES = ("data", "tokenizer", "pretrain", "finetune", "evaluate")


@dataclass
class CacheConfig:
    enabled: bool
    store: str
    staging_dir: str
    refresh: Any  # a stage name, a list of them, or "all"
    verify: str = "stamp"  # how a hit is checked: stamp (O(1) in entry size) | full (re-hash every file)
    stamp_dir: Optional[str] = None  # where this user's file stamps are kept (None: none, always re-hash)

    def __post_init__(self) -> None:
        _check_choice("cache.verify", self.verify, ("stamp", "full"))
        names = self.refresh if isinstance(self.refresh, list) else [self.refresh]
        for name in names:
            if name is not None:
                _check_choice("cache.refresh", str(name), (*STAGES, "all"))


@dataclass
class PromotionConfig:
    enabled: bool
    model_name: Optional[str]  # None: <name>-<gated part>, resolved by lm_tasks.promotion
    alias: str
    metric: str
    mode: str
    margin: float
    force: bool

    def __post_init__(self) -> None:
        _check_choice("promotion.mode", self.mode, ("min", "max"))
        if self.margin < 0:
            raise ConfigError(f"promotion.margin must be >= 0, got {self.margin}")


@dataclass
class RunnerConfig:
    kind: str
    address: Optional[str]
    n_workers: int
    threads_per_worker: int

    def __post_init__(self) -> None:
        _check_choice("runner.kind", self.kind, ("local", "dask"))


@dataclass
class ServingConfig:
    """Upper bounds on one request to a served pyfunc model, logged with it (lm_tasks/serving.py)."""
    max_inputs: int       # prompts or texts per request
    max_new_tokens: int   # the largest max_new_tokens a request may ask for
    max_input_chars: int  # characters per prompt or text

    def __post_init__(self) -> None:
        for key in ("max_inputs", "max_new_tokens", "max_input_chars"):
            if getattr(self, key) < 1:
                raise ConfigError(f"serving.{key} must be >= 1, got {getattr(self, key)}")


@dataclass
class SearchConfig:
    """Who this run is within a hyperparameter search (hparams_search=...): set on each
    trial by the search, null otherwise. Not part of any cache or lifecycle key."""

    study: Optional[str] = None    # the Optuna study's name
    storage: Optional[str] = None  # its storage URL, where the trial reports validation metrics
    trial: Optional[int] = None    # this trial's number in the study
    run_id: Optional[str] = None   # the search's MLflow run, which groups its trials


@dataclass
class LifecycleConfig:
    name: str
    seed: int
    init_from: Optional[str]
    paths: PathsConfig
    data: DataConfig
    tokenizer: TokenizerConfig
    model: ModelConfig
    trainer: TrainerConfig
    optim: OptimConfig
    finetune: Dict[str, TaskConfig]
    eval: EvalConfig
    tracking: TrackingConfig
    cache: CacheConfig
    promotion: PromotionConfig
    runner: RunnerConfig
    serving: ServingConfig
    search: SearchConfig = field(default_factory=SearchConfig)
    # The resolved YAML, saved with every run (not part of the schema).
    resolved_yaml: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        _check_places(self)
        family = self.model.family
        if family == "ngram":  # the key-width rule lives with the model; checked here before any stage runs
            from lm_tasks.models.ngram import NGramConfig

            try:
                NGramConfig(vocab_size=self.tokenizer.vocab_size, order=self.model.order)
            except ValueError:
                raise ConfigError(f"model.order={self.model.order} with tokenizer.vocab_size="
                                  f"{self.tokenizer.vocab_size} needs n-gram keys wider than 63 bits; "
                                  "lower one of them") from None
        if self.trainer.strategy == "fsdp" and family != "gpt":
            raise ConfigError(f"trainer.strategy=fsdp shards the GPT's Transformer blocks; a {family} model has "
                              "none: use trainer=ddp")
        if self.data.mix.tasks > 0 and not self.finetune:
            raise ConfigError(f"data.mix.tasks={self.data.mix.tasks} adds the selected fine-tuning tasks' training "
                              "text to pretraining, but no task is selected: add finetune=<task>[,<task>...] "
                              "(e.g. finetune=classification) or set data.mix.tasks=0")
        if self.finetune and not self.model.trainable and self.init_from is None:
            raise ConfigError(
                f"model.family={self.model.family} has no hidden states to fine-tune "
                f"(finetune={','.join(self.finetune)}); use model=gpt, rnn, lstm or gru, or finetune=none"
            )


def compose_config(overrides: list[str] | tuple[str, ...] = (), with_hydra: bool = False) -> DictConfig:
    """Compose the entry config with Hydra overrides; explain mistyped keys. `with_hydra`
    keeps the `hydra` section (run mode, sweeper, launcher) and leaves it unresolved."""
    overrides = list(overrides)
    try:
        with _compose_api():
            cfg = compose(config_name=ENTRY_CONFIG, overrides=overrides, return_hydra_config=with_hydra)
        if not with_hydra:
            OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(redact(_explain(err, overrides))) from None
    return cfg


def group_options(group: str) -> list[str]:
    """The options of a config group (model -> gpt, gpt2_small, ...)."""
    with _compose_api():
        return GlobalHydra.instance().config_loader().get_group_options(group)


@contextmanager
def _compose_api() -> Iterator[None]:
    """Hydra's compose API on conf/, also inside a running Hydra app (the command line's
    job calls the flow, which composes again), whose global state is put back after."""
    outer = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            yield
    finally:
        restore_gh_from_backup(outer) if outer is not None else GlobalHydra.instance().clear()


def load_config(overrides: list[str] | tuple[str, ...] = ()) -> LifecycleConfig:
    """Compose, resolve and validate the lifecycle config."""
    cfg = compose_config(overrides)
    schema = OmegaConf.structured(LifecycleConfig)
    try:
        typed = OmegaConf.merge(schema, cfg)
        config: LifecycleConfig = OmegaConf.to_object(typed)
    except OmegaConfBaseException as err:
        raise ConfigError(redact(_explain(err, overrides))) from None
    remember(OmegaConf.to_container(cfg))  # the resolved config may carry credentials (tracking_uri)
    config.resolved_yaml = redact(OmegaConf.to_yaml(cfg), remembered=False)  # the record, credentials masked
    return config


def config_from_dict(tree: dict) -> LifecycleConfig:
    """Rebuild a validated config from its `dataclasses.asdict` form (in a worker process)."""
    tree = dict(tree)
    resolved = tree.pop("resolved_yaml", "")
    config: LifecycleConfig = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(LifecycleConfig), tree))
    remember(tree)
    config.resolved_yaml = resolved
    return config


# --- places ------------------------------------------------------------------

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _check_places(cfg: LifecycleConfig) -> None:
    """Outputs stay where the config says and never inside the cache store (or around it):
    `name` is a plain folder name, no path climbs with '..', and no output folder overlaps a
    cache folder, because stages replace what they find at their output paths."""
    if not NAME.fullmatch(cfg.name):
        raise ConfigError(f"name={cfg.name!r} must be a plain folder name (letters, digits, '.', '_', '-'; "
                          "no '/' or leading dot): it names outputs/<name>/ and the MLflow experiment")
    places = {f"paths.{key}": value for key, value in vars(cfg.paths).items()}
    protected = {"cache.staging_dir": cfg.cache.staging_dir}
    if "://" not in cfg.cache.store or cfg.cache.store.startswith("file://"):
        protected["cache.store"] = cfg.cache.store.removeprefix("file://")
    for key, value in {**places, **protected}.items():
        if ".." in Path(value).parts:
            raise ConfigError(f"{key}={value!r} climbs with '..': give the folder as an absolute path")
    for key, value in places.items():
        if key == "paths.root_dir":
            continue
        for other, folder in protected.items():
            a, b = Path(value).absolute(), Path(folder).absolute()
            if a == b or a.is_relative_to(b) or b.is_relative_to(a):
                raise ConfigError(f"{key}={value!r} overlaps {other}={folder!r}: stage outputs and the cache "
                                  f"must live apart; choose another name (now {cfg.name!r}) or path")


# --- helpers -----------------------------------------------------------------


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        hint = difflib.get_close_matches(str(value), choices, n=1)
        did_you_mean = f" Did you mean '{hint[0]}'?" if hint else ""
        raise ConfigError(f"{key}='{value}' is not one of {', '.join(choices)}.{did_you_mean}")


def _explain(err: Exception, overrides: list[str]) -> str:
    """Turn Hydra/OmegaConf errors about unknown keys into a message with suggestions."""
    message = str(err).strip()
    cause = err.__cause__  # Hydra wraps the OmegaConf error that names the key
    if cause is not None and str(cause) not in message:
        message = f"{message}\n{cause}"
    option = re.search(r"Could not find '([\w/]+)/([^']+)'\s+Available options in '[^']+':\s+(.*?)\s*"
                       r"(?:Config search path|$)", message, re.DOTALL)
    if option:  # a mistyped option of a config group (model=smal)
        group, choice, options = option.group(1), option.group(2), option.group(3).split()
        hint = difflib.get_close_matches(choice, options, n=1)
        did_you_mean = f" Did you mean {group}={hint[0]}?" if hint else ""
        return f"Unknown option '{choice}' for {group}.{did_you_mean} Options: {', '.join(options)}"
    bad_key = _unknown_key(err, message)
    if bad_key is None:
        return message
    reference = _reference_config(overrides)
    parent, _, leaf = bad_key.rpartition(".")
    node = OmegaConf.select(reference, parent) if parent else reference
    valid = sorted(node.keys()) if isinstance(node, DictConfig) else []
    all_keys = _leaf_keys(reference)
    near = [f"{parent}.{k}" if parent else k for k in difflib.get_close_matches(leaf, valid, n=3)]
    near += difflib.get_close_matches(bad_key, all_keys, n=3, cutoff=0.75)
    near = list(dict.fromkeys(near))[:3]
    lines = [f"Unknown config key '{bad_key}'."]
    if near:
        lines.append(f"Did you mean: {', '.join(near)}?")
    if valid:
        lines.append(f"Valid keys under '{parent or '<root>'}': {', '.join(valid)}")
    return " ".join(lines)


def _unknown_key(err: Exception, message: str) -> str | None:
    override = re.search(r"Could not override '([\w.]+)'", message)
    if override:
        return override.group(1)
    missing = re.search(r"Key '(\w+)' (?:not in|is not in struct)", message)
    full_key = getattr(err, "full_key", None) or getattr(err.__cause__, "full_key", None)
    if missing:
        return str(full_key) if full_key else missing.group(1)
    return None


def _reference_config(overrides: list[str]) -> DictConfig:
    """The config composed with only the group choices of `overrides` (for suggestions)."""
    group_choices = [o for o in overrides if "=" in o and "." not in o.split("=", 1)[0]]
    try:
        with _compose_api():
            return compose(config_name=ENTRY_CONFIG, overrides=group_choices)
    except (HydraException, OmegaConfBaseException):
        with _compose_api():
            return compose(config_name=ENTRY_CONFIG)


def _leaf_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key in cfg.keys():
        path = f"{prefix}{key}"
        keys.append(path)
        value = cfg._get_node(key)
        if isinstance(value, DictConfig):
            keys += _leaf_keys(value, prefix=f"{path}.")
    return keys
