"""Config loading, overrides and validation: every bad input is one ConfigError naming the field."""

from __future__ import annotations

import pytest

from widthwise.app import config as config_module
from widthwise.app import trainer
from widthwise.app.config import (
    Config,
    apply_overrides,
    builtin_names,
    config_fields,
    config_keys,
    load_config,
    parse_override,
)
from widthwise.app.sweep.spec import RUNTIME_KEYS
from widthwise.app.transfer import FORWARD_KEYS
from widthwise.errors import ConfigError
from widthwise.multipliers import PLACEMENTS
from widthwise.optim.build import OPTIMIZERS
from widthwise.optim.muon import NS_DTYPES
from widthwise.parametrizations import MULTIPLIER_KINDS
from widthwise.recipes import PRESETS
from widthwise.rules import MUON_ADJUST_LR_FNS
from widthwise.schedules import SCHEDULES


def test_builtins_load_and_defaults_follow_the_papers():
    assert {"demo", "tiny"} <= set(builtin_names())
    for name in builtin_names():
        assert isinstance(load_config(name), Config)
    c = load_config(None)
    assert c.scaling.recipe == "robust"
    assert (c.multipliers.kind, c.multipliers.placement, c.multipliers.weight_decay) == ("row_col", "all", 2e-3)
    assert c.optim.name == "adamw" and c.optim.grad_clip == 1.0


def test_overrides_parse_yaml_values_and_floats_written_without_a_dot():
    c = load_config("tiny", ["optim.lr=3e-3", "model.width=64", "multipliers.lr=null", "train.compile=false",
                             "multipliers.placement=[q_proj, down_proj]"])
    assert c.optim.lr == 0.003 and isinstance(c.optim.lr, float)
    assert c.model.width == 64 and c.multipliers.lr is None and c.train.compile is False
    assert c.multipliers.placement == ["q_proj", "down_proj"]
    assert parse_override("data.path=/tmp/x y") == ("data.path", "/tmp/x y")


def test_yaml_roundtrip(tmp_path):
    c = load_config("demo")
    path = tmp_path / "c.yaml"
    path.write_text(c.to_yaml())
    assert load_config(path) == c


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["model.widht=3"], "model.widht"),
        (["nonsense.x=1"], "'nonsense.x'"),
        (["model.width=abc"], "model.width: expected an integer"),
        (["model.width=12.5"], "model.width: expected an integer"),
        (["model.width=-64"], "model.width: must be positive"),
        (["model.depth=0"], "model.depth: must be positive"),
        (["model.heads=3"], "model.heads: 3 does not divide model.width=32"),
        (["model.kv_heads=3", "model.heads=4"], "model.kv_heads: 3 does not divide model.heads=4"),
        (["model.heads=32"], "model.heads: head dim 1"),
        (["scaling.recipe=nope"], "scaling.recipe: unknown recipe 'nope'"),
        (["diagnostics.every=0"], "diagnostics.every: must be positive"),
        (["diagnostics.gain_sequences=-1"], "diagnostics.gain_sequences: must be positive"),
        (["diagnostics.drift_threshold=0"], "diagnostics.drift_threshold: must be positive"),
        (["diagnostics.spectra=maybe"], "diagnostics.spectra: expected true/false"),
        (["scaling.base_width=64"], "scaling.base_width: 64 is larger"),
        (["optim.name=sgd"], "optim.name: unknown value 'sgd'"),
        (["optim.lr=-1"], "optim.lr: must be positive"),
        (["optim.weight_decay=-0.1"], "optim.weight_decay: must be non-negative"),
        (["optim.betas=[0.9]"], "optim.betas"),
        (["optim.ns_dtype=float16"], "optim.ns_dtype: unknown value 'float16'"),
        (["multipliers.kind=diag"], "multipliers.kind: unknown value 'diag'"),
        (["multipliers.placement=some"], "multipliers.placement: unknown value 'some'"),
        (["schedule.kind=linear"], "schedule.kind: unknown value 'linear'"),
        (["schedule.warmup=1000"], "schedule.warmup: 1000 exceeds train.steps=30"),
        (["train.steps=ten"], "train.steps: expected an integer"),
        (["train.device=tpu"], "train.device: unknown device 'tpu'"),
        (["train.device=cuda:abc"], "train.device: unknown device 'cuda:abc'"),
        (["train.device=cpu:0"], "train.device: unknown device 'cpu:0'"),
        (["train.dtype=fp8"], "train.dtype: unknown value 'fp8'"),
        (["train.compile=maybe"], "train.compile"),
        (["train.batch_size=true"], "train.batch_size: expected an integer"),
        (["data.vocab_size=100"], "data.vocab_size: 100 is below 257"),
        (["data.val_fraction=0.9"], "data.val_fraction"),
        (["optim.lr"], "expected section.key=value"),
    ],
)
def test_bad_values_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=None) as err:
        load_config("tiny", overrides)
    message = str(err.value)
    assert field in message, message
    assert "\n" not in message


def test_unknown_config_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown config 'demoo'"):
        load_config("demoo")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model: {width: [\n", "bad.yaml: not valid YAML at line 2"),
        ("- 1\n- 2\n", "expected a mapping of sections"),
        ("model: 3\n", "model: expected a mapping"),
        ("model: {width: 64, colour: red}\n", "unknown key model.colour"),
    ],
)
def test_bad_files(tmp_path, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(bad)


def test_a_config_that_is_not_utf8_is_one_line_naming_the_byte(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"model: {width: 64}\n\xff\xfe\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not UTF-8 text \(invalid byte at offset 19\)"):
        load_config(bad)


def test_apply_overrides_from_dict_revalidates():
    c = load_config("tiny")
    assert apply_overrides(c, {"optim.lr": 0.1}).optim.lr == 0.1
    with pytest.raises(ConfigError, match="model.heads"):
        apply_overrides(c, {"model.heads": 5})


def test_every_field_has_a_one_line_help():
    for key, f in config_fields():
        text = f.metadata.get("help")
        assert isinstance(text, str) and text.strip() and "\n" not in text, key


def test_flag_queries_replace_the_key_tuples():
    assert set(config_keys("resumable")) == {
        "train.steps", "train.eval_every", "train.checkpoint_every", "train.keep_checkpoints", "train.log_every",
        "train.progress", "train.plots", "train.tensorboard", "train.sample_tokens", "train.sample_prompt",
        "train.threads", "train.compile", "train.divergence_factor", "data.cache_dir", "diagnostics.every",
        "diagnostics.spectra", "diagnostics.gains", "diagnostics.gain_sequences", "diagnostics.drift_threshold",
        "train.grad_accum", "train.parallel", "train.dist_timeout_s"}
    assert set(config_keys("runtime")) == {"train.progress", "train.threads", "data.cache_dir", "train.grad_accum",
                                           "train.parallel", "train.dist_timeout_s"}
    assert config_keys("forward", section="model") == ("embedding_multiplier", "head_multiplier", "attention_scale")
    assert config_keys("width", "tuned", "seed") == ("model.width", "model.heads", "model.kv_heads", "optim.lr",
                                                     "optim.weight_decay", "train.seed")
    assert set(config_keys("family")) == {"scaling.recipe", "optim.name", "multipliers.kind"}
    assert config_keys("resumable") == trainer.RESUMABLE_KEYS and config_keys("runtime") == RUNTIME_KEYS
    assert config_keys("forward", section="model") == FORWARD_KEYS


def test_allowed_values_come_from_the_modules_that_own_them():
    choices = {key: f.metadata.get("choices") for key, f in config_fields()}
    assert choices["optim.name"] is OPTIMIZERS
    assert choices["optim.ns_dtype"] is NS_DTYPES
    assert choices["optim.adjust_lr_fn"] is MUON_ADJUST_LR_FNS
    assert choices["schedule.kind"] is SCHEDULES
    assert choices["multipliers.kind"] == ("none", *MULTIPLIER_KINDS)
    assert config_module.PLACEMENTS is PLACEMENTS and config_module.PRESETS is PRESETS
    assert config_module.MULTIPLIER_KINDS is MULTIPLIER_KINDS  # imported, not defined a second time


def test_each_section_validates_its_own_fields_and_config_the_cross_checks():
    c = load_config("tiny")
    c.optim.lr = -1.0
    with pytest.raises(ConfigError, match="optim.lr: must be positive"):
        c.optim.validate()
    c = load_config("tiny")
    c.schedule.warmup = 10_000
    c.schedule.validate()  # on its own the schedule is fine: warmup against steps is a check across sections
    with pytest.raises(ConfigError, match="schedule.warmup: 10000 exceeds train.steps=30"):
        c.validate()
