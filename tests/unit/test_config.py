"""The shipped config composes, every group option validates, typos get suggestions."""

from __future__ import annotations

import pytest

from lm_tasks.config import CONF_DIR, ConfigError, LifecycleConfig, load_config

GROUP_OPTIONS = [
    (group.name, path.stem)
    for group in sorted(CONF_DIR.iterdir()) if group.is_dir()
    for path in sorted(group.glob("*.yaml")) if not path.stem.startswith("_")
]
# Options that need a value the user must supply.
REQUIRED = {
    ("data", "local"): ["data.files=[x.txt]"],
    ("data", "hub"): ["data.hub_name=some/dataset"],
    ("experiment", "lm_speedrun"): ["data.files=[x.txt]"],  # a preset for any corpus: the user names it
}


def test_default_config_is_typed_and_resolved(tmp_path):
    cfg = load_config([f"paths.root_dir={tmp_path}"])
    assert isinstance(cfg, LifecycleConfig)
    assert cfg.data.source == "embedded"
    assert cfg.tokenizer.kind == "bpe"
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.precision == "32-true"
    assert cfg.paths.data_dir == f"{tmp_path}/outputs/lm-lifecycle/data"
    assert cfg.tracking.tracking_uri == f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    assert "${" not in cfg.resolved_yaml


@pytest.mark.parametrize("group,option", GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_every_group_option_composes(group, option):
    cfg = load_config([f"{group}={option}", *REQUIRED.get((group, option), [])])
    assert isinstance(cfg, LifecycleConfig)


def test_overrides_reach_typed_config():
    cfg = load_config(["model.n_layer=2", "optim.lr=0.01", "trainer.max_steps=7", "data.cleaning.exact_dedup=false"])
    assert (cfg.model.n_layer, cfg.optim.lr, cfg.trainer.max_steps) == (2, 0.01, 7)
    assert cfg.data.cleaning.exact_dedup is False


@pytest.mark.parametrize("override,suggestion", [
    ("trainer.max_step=3", "trainer.max_steps"),
    ("optim.lrr=0.1", "optim.lr"),
    ("data.cleaning.min_char=5", "data.cleaning.min_chars"),
    ("+model.n_layers=3", "model.n_layer"),
])
def test_unknown_key_suggests_nearest(override, suggestion):
    with pytest.raises(ConfigError) as err:
        load_config([override])
    message = str(err.value)
    assert "Unknown config key" in message
    assert f"Did you mean: {suggestion}" in message


def test_unknown_group_option_suggests_the_nearest_and_lists_the_options():
    with pytest.raises(ConfigError, match=r"^Unknown option 'tiy' for model\. Did you mean model=tiny\? "
                                          r"Options: gpt, gpt2_small, gru, lstm, modern, ngram, rnn, small, tiny$"):
        load_config(["model=tiy"])


@pytest.mark.parametrize("override,message", [
    ("tokenizer.kind=bpee", "Did you mean 'bpe'"),
    ("model.n_embd=130", "divisible by model.n_head"),
    ("data.val_ratio=1.5", "val_ratio must be between 0 and 1"),
    ("model.pos_encoding=alibi", "not one of learned, sinusoidal, rotary"),
    ("trainer.max_steps=0", "max_steps must be >= 1"),
])
def test_invalid_values_fail_with_reason(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config([override])


@pytest.mark.parametrize("override,message", [
    ("dropout=1.0", r"finetune.classification.dropout=1.0 must be in \[0, 1\)"),
    ("layer_lr_decay=0.0", r"finetune.classification.layer_lr_decay=0.0 must be in \(0, 1\]"),
])
def test_invalid_fine_tuning_values_fail_with_reason(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(["finetune=classification", f"finetune.classification.{override}"])


def test_wrong_type_is_a_config_error():
    with pytest.raises(ConfigError, match="n_layer"):
        load_config(["model.n_layer=many"])


def test_local_source_requires_files():
    with pytest.raises(ConfigError, match="data=local needs files"):
        load_config(["data=local"])


def test_cleaning_values_are_checked():
    with pytest.raises(ConfigError, match=r"near_dedup.threshold must be in \(0, 1\).*exact_dedup"):
        load_config(["data.cleaning.near_dedup.threshold=1.0"])
    with pytest.raises(ConfigError, match="data.cleaning.pii='mail' is not one of email, phone, ip. Did you mean 'email'"):
        load_config(["data.cleaning.pii=[mail]"])
    with pytest.raises(ConfigError, match="data.cleaning.languages='eng'.*Did you mean 'en'"):
        load_config(["data.cleaning.languages=[eng]"])


def test_gopher_preset_matches_the_published_thresholds():
    from lm_tasks.data.quality import GOPHER_THRESHOLDS

    quality = load_config(["data/cleaning=gopher"]).data.cleaning.quality
    assert {k: v for k, v in vars(quality).items()} == {k: GOPHER_THRESHOLDS[k] for k in vars(quality)}
