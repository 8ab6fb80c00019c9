"""The training configuration: typed sections, YAML in and out, ``--set`` overrides, validation.

Every field has a type and a default; loading rejects unknown keys, wrong types and impossible values with
a :class:`ConfigError` whose message is one line naming the field (``model.heads: ...``). Fields left
``null`` are resolved from the recipe, the data or the machine when the run starts; the run directory's
``config.yaml`` stores the resolved values.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml

from ..errors import ConfigError
from ..multipliers import DEFAULT_MULTIPLIER_WD

MULTIPLIER_KINDS = ("none", "scalar", "row", "col", "row_col")


@dataclass
class ModelConfig:
    """Shape of the reference LLaMA model (:mod:`widthwise.models.llama`) and its fixed forward multipliers.

    ``vocab_size: null`` takes the tokenizer's size. ``embedding_multiplier``, ``head_multiplier`` and
    ``attention_scale`` left ``null`` take the recipe's values (head ``1/m``, attention ``1/d_head`` for muP-style
    recipes), in the spirit of Falcon-H1's named multipliers.
    """

    width: int = 128
    depth: int = 4
    heads: int = 4
    kv_heads: int = 4
    ffn_mult: float = 8 / 3
    vocab_size: int | None = None
    tie_embeddings: bool = False
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    embedding_multiplier: float | None = None
    head_multiplier: float | None = None
    attention_scale: float | None = None


@dataclass
class ScalingConfig:
    """The width-scaling recipe and the base (proxy) width its LR/WD values refer to.

    ``recipe``: ``sp`` | ``mup`` | ``robust`` or a path to a recipe YAML file; ``overrides``: recipe fields,
    e.g. ``{wd_exponent: 1.0}``. ``base_width: null`` means the model is its own base (every multiplier 1).
    """

    recipe: str = "robust"
    base_width: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class MultipliersConfig:
    """Learnable multipliers (arXiv 2601.04890). ``kind: none`` trains without them.

    ``placement``: ``all`` | ``symmetry_free`` | a list of regexes; ``lr: null`` takes ``optim.lr``;
    ``absorb_forward``: start the learnable multipliers of the embedding, query and head at the fixed
    forward multipliers (which then become 1), as the paper does when converting a muP model.
    """

    kind: str = "row_col"
    placement: str | list[str] = "all"
    lr: float | None = None
    weight_decay: float = DEFAULT_MULTIPLIER_WD
    init: float = 1.0
    absorb_forward: bool = False
    max_norm: float | None = None


@dataclass
class OptimConfig:
    """Optimizer and its base (base-width) values. ``name: muon`` puts the hidden matrices on Muon.

    ``ns_dtype``: dtype of Muon's Newton-Schulz iteration, ``auto`` (bf16 where bf16 matmuls are fast, else fp32)
    | ``bfloat16`` (bitwise ``torch.optim.Muon`` on CPU) | ``float32``; see :class:`widthwise.optim.muon.BatchedMuon`.
    """

    name: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    grad_clip: float | None = 1.0
    muon_lr: float | None = None
    adjust_lr_fn: str = "match_rms_adamw"
    ns_dtype: str = "auto"


@dataclass
class ScheduleConfig:
    """LR schedule relative to each group's LR: ``cosine`` | ``wsd`` | ``constant`` after ``warmup`` steps."""

    kind: str = "cosine"
    warmup: int = 20
    min_ratio: float = 0.1
    decay_fraction: float = 0.2


@dataclass
class TrainConfig:
    """The loop. ``device``/``dtype``/``compile`` ``auto`` pick the fast path measured on this machine."""

    steps: int = 200
    batch_size: int = 16
    seq_len: int = 128
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    compile: str | bool = "auto"
    threads: int | None = None
    eval_every: int = 50
    eval_tokens: int = 32768
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 1
    divergence_factor: float | None = 1.5
    sample_tokens: int = 120
    sample_prompt: str = ""
    tensorboard: bool = True
    plots: bool = True
    progress: bool = True


@dataclass
class DataConfig:
    """Training text: ``path: null`` is the bundled Shakespeare corpus; a file, folder or jsonl otherwise."""

    path: str | None = None
    vocab_size: int = 4096
    val_fraction: float = 0.05
    split_seed: int = 0
    cache_dir: str | None = None


@dataclass
class DiagnosticsConfig:
    """Measurements logged to ``diagnostics.jsonl`` every ``every`` steps (``null``: off).

    Top singular values (warm-started power iteration), weight RMS against the AdamW noise equilibrium,
    sublayer gains on the first ``gain_sequences`` validation sequences, multiplier statistics and symmetry
    drift (a warning when a monitor passes ``drift_threshold``, in log2 units: 3 is a factor 8).
    """

    every: int | None = 50
    spectra: bool = True
    gains: bool = True
    gain_sequences: int = 4
    drift_threshold: float = 3.0


@dataclass
class Config:
    """A full training configuration."""

    model: ModelConfig = field(default_factory=ModelConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    multipliers: MultipliersConfig = field(default_factory=MultipliersConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def get(self, dotted: str) -> Any:
        section, key = _split_key(dotted)
        return getattr(getattr(self, section), key)


_SECTION_TYPES = {"model": ModelConfig, "scaling": ScalingConfig, "multipliers": MultipliersConfig,
                  "optim": OptimConfig, "schedule": ScheduleConfig, "train": TrainConfig, "data": DataConfig,
                  "diagnostics": DiagnosticsConfig}


def builtin_names() -> list[str]:
    """Names of the built-in configs (``demo``, ``tiny``, ...)."""
    return sorted(p.name[:-5] for p in resources.files("widthwise.app.configs").iterdir() if p.name.endswith(".yaml"))


def load_config(source: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A validated config from a built-in name or a YAML path (``None``: all defaults), then ``key=value`` overrides."""
    data: dict[str, Any] = {}
    if source is not None:
        data = _read_source(str(source))
    config = from_dict(data)
    return apply_overrides(config, overrides)


def yaml_line(err: yaml.YAMLError, prefix: str = " at line") -> str:
    """Where a YAML error is, for a one-line message: ``" at line 3"`` (``""`` when PyYAML does not say)."""
    mark = getattr(err, "problem_mark", None)
    return f"{prefix} {mark.line + 1}" if mark is not None else ""


def _read_source(source: str) -> dict[str, Any]:
    path = Path(source)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {source} does not exist")
        text = path.read_text(encoding="utf-8")
    elif source in builtin_names():
        text = resources.files("widthwise.app.configs").joinpath(f"{source}.yaml").read_text(encoding="utf-8")
    else:
        raise ConfigError(f"unknown config {source!r}: not a file and not a built-in ({', '.join(builtin_names())})")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"config {source}{yaml_line(err, ' line')}: not valid YAML "
                          f"({getattr(err, 'problem', err)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {source}: expected a mapping of sections, got {type(data).__name__}")
    data.pop("plan", None)  # a run's config.yaml carries the resolved plan beside the config
    return data


def from_dict(data: dict[str, Any]) -> Config:
    """A validated :class:`Config` from nested dicts (missing keys take defaults)."""
    sections = {}
    for name, value in data.items():
        if name not in _SECTION_TYPES:
            raise ConfigError(f"unknown config section {name!r}; expected one of {', '.join(_SECTION_TYPES)}")
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping of keys, got {_show(value)}")
        sections[name] = _build_section(name, value)
    config = Config(**sections)
    validate(config)
    return config


def _build_section(name: str, values: dict[str, Any]) -> Any:
    cls = _SECTION_TYPES[name]
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown key {name}.{key}; {name} has {', '.join(sorted(known))}")
        kwargs[key] = _coerce(value, hints[key], f"{name}.{key}")
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_type_name(hint)}, got {_show(value)}")
    if hint is Any:
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected {_type_name(hint)}, got {_show(value)}")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {_show(value)}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str and isinstance(value, str):
        return value
    raise ConfigError(f"{where}: expected {_type_name(hint)}, got {_show(value)}")


def _type_name(hint: Any) -> str:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin is list:
        return f"a list of {_type_name(args[0])}"
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(hint, str(hint))


def _show(value: Any) -> str:
    text = repr(value)
    return f"{text[:60]}..." if len(text) > 60 else text


def _split_key(dotted: str) -> tuple[str, str]:
    section, _, key = dotted.partition(".")
    if not key or section not in _SECTION_TYPES:
        raise ConfigError(f"{dotted!r}: expected section.key with section one of {', '.join(_SECTION_TYPES)}")
    known = {f.name for f in fields(_SECTION_TYPES[section])}
    if key not in known:
        raise ConfigError(f"unknown key {dotted}; {section} has {', '.join(sorted(known))}")
    return section, key


def parse_override(text: str) -> tuple[str, Any]:
    """``"optim.lr=3e-3"`` -> ``("optim.lr", 0.003)``; the value is read as YAML (``null``, lists, numbers)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    _split_key(key)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def apply_overrides(config: Config, overrides: list[str] | tuple[str, ...] | dict[str, Any]) -> Config:
    """A new validated config with ``section.key=value`` overrides applied (strings or a dict)."""
    pairs = list(overrides.items()) if isinstance(overrides, dict) else [parse_override(o) for o in overrides]
    if not pairs:
        return config
    data = config.to_dict()
    for key, value in pairs:
        section, name = _split_key(key)
        data[section][name] = value
    return from_dict(data)


def _positive(config: Config, dotted: str, allow_zero: bool = False) -> None:
    value = config.get(dotted)
    if value is None:
        return
    bad = value < 0 if allow_zero else value <= 0
    if bad or (isinstance(value, float) and not math.isfinite(value)):
        need = "non-negative" if allow_zero else "positive"
        raise ConfigError(f"{dotted}: must be {need}, got {value!r}")


def _choice(config: Config, dotted: str, choices: tuple[str, ...]) -> None:
    value = config.get(dotted)
    if value not in choices:
        raise ConfigError(f"{dotted}: unknown value {value!r}; expected one of {', '.join(choices)}")


def validate(config: Config) -> None:
    """Reject impossible or unsupported settings with a :class:`ConfigError` naming the field."""
    from ..optim.build import OPTIMIZERS
    from ..optim.muon import NS_DTYPES
    from ..recipes import PRESETS
    from ..schedules import SCHEDULES

    for key in ("model.width", "model.depth", "model.heads", "model.kv_heads", "model.ffn_mult", "model.vocab_size",
                "model.rope_theta", "model.norm_eps", "model.embedding_multiplier", "model.head_multiplier",
                "model.attention_scale", "scaling.base_width", "optim.lr", "optim.eps", "optim.grad_clip",
                "optim.muon_lr", "multipliers.lr", "multipliers.init", "multipliers.max_norm", "train.steps",
                "train.batch_size", "train.seq_len", "train.threads", "train.eval_every", "train.eval_tokens",
                "train.checkpoint_every", "train.keep_checkpoints", "train.log_every", "train.divergence_factor",
                "data.vocab_size", "diagnostics.every", "diagnostics.gain_sequences", "diagnostics.drift_threshold"):
        _positive(config, key)
    for key in ("optim.weight_decay", "multipliers.weight_decay", "schedule.warmup", "schedule.min_ratio",
                "train.seed", "train.sample_tokens", "data.split_seed"):
        _positive(config, key, allow_zero=True)
    m = config.model
    if m.width % m.heads:
        raise ConfigError(f"model.heads: {m.heads} does not divide model.width={m.width}")
    if m.heads % m.kv_heads:
        raise ConfigError(f"model.kv_heads: {m.kv_heads} does not divide model.heads={m.heads}")
    if (m.width // m.heads) % 2:
        raise ConfigError(f"model.heads: head dim {m.width // m.heads} (width/heads) must be even for RoPE")
    base = config.scaling.base_width
    if base is not None and base > m.width:
        raise ConfigError(f"scaling.base_width: {base} is larger than model.width={m.width}; the base is the proxy")
    recipe = config.scaling.recipe
    if recipe not in PRESETS and not recipe.endswith((".yaml", ".yml", ".json")):
        raise ConfigError(f"scaling.recipe: unknown recipe {recipe!r}; expected one of {', '.join(PRESETS)} "
                          "or a recipe file (.yaml/.json)")
    _choice(config, "multipliers.kind", MULTIPLIER_KINDS)
    pl = config.multipliers.placement
    if isinstance(pl, str) and pl not in ("all", "symmetry_free"):
        raise ConfigError(f"multipliers.placement: unknown value {pl!r}; expected all, symmetry_free or a list "
                          "of regexes")
    _choice(config, "optim.name", OPTIMIZERS)
    _choice(config, "optim.adjust_lr_fn", ("original", "match_rms_adamw"))
    _choice(config, "optim.ns_dtype", NS_DTYPES)
    if len(config.optim.betas) != 2 or not all(0 <= b < 1 for b in config.optim.betas):
        raise ConfigError(f"optim.betas: expected two numbers in [0, 1), got {config.optim.betas!r}")
    _choice(config, "schedule.kind", SCHEDULES)
    if config.schedule.warmup > config.train.steps:
        raise ConfigError(f"schedule.warmup: {config.schedule.warmup} exceeds train.steps={config.train.steps}")
    if config.schedule.min_ratio > 1:
        raise ConfigError(f"schedule.min_ratio: must be in [0, 1], got {config.schedule.min_ratio}")
    if not 0 < config.schedule.decay_fraction <= 1:
        raise ConfigError(f"schedule.decay_fraction: must be in (0, 1], got {config.schedule.decay_fraction}")
    t = config.train
    device = t.device.split(":")[0]
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"train.device: unknown device {t.device!r}; expected auto, cpu, cuda or cuda:N")
    _choice(config, "train.dtype", ("auto", "float32", "bfloat16"))
    if t.compile not in ("auto", True, False):
        raise ConfigError(f"train.compile: expected auto, true or false, got {t.compile!r}")
    if config.data.vocab_size < 257:
        raise ConfigError(f"data.vocab_size: {config.data.vocab_size} is below 257 (256 bytes + end of text)")
    if config.model.vocab_size is not None and config.model.vocab_size < 257:
        raise ConfigError(f"model.vocab_size: {config.model.vocab_size} is below 257 (256 bytes + end of text)")
    if not 0 < config.data.val_fraction <= 0.5:
        raise ConfigError(f"data.val_fraction: must be in (0, 0.5], got {config.data.val_fraction}")
