"""The training configuration: typed sections, YAML in and out, ``--set`` overrides, validation.

Every field has a type, a default and, in its ``metadata``, a one-line ``help`` and the facts other modules
ask about it (:func:`config_keys`): ``resumable`` (a resume may change it), ``runtime`` (how a run executes or is
watched, not what it computes), ``width`` (follows the model width), ``forward`` (a forward multiplier a run
resolves from the recipe at its width), ``seed``, ``tuned`` (a base value a sweep tunes), ``family`` (named in a
sweep family's label), plus ``check`` (``positive`` | ``non_negative``) and ``choices`` for validation.

Loading rejects unknown keys, wrong types and impossible values with a :class:`ConfigError` whose message is
one line naming the field (``model.heads: ...``); each section validates its own fields, :class:`Config` the
checks across sections. Fields left ``null`` are resolved from the recipe, the data or the machine when the run
starts; the run directory's ``config.yaml`` keeps the fields as written and the values they resolved to under
``resolved:`` (:mod:`widthwise.app.rundir`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import types
import typing
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, get_args, get_origin

import yaml

from ..errors import ConfigError
from ..multipliers import DEFAULT_MULTIPLIER_WD, PLACEMENTS
from ..optim.build import OPTIMIZERS
from ..optim.muon import NS_DTYPES
from ..parametrizations import MULTIPLIER_KINDS
from ..recipes import PRESETS
from ..rules import MUON_ADJUST_LR_FNS
from ..schedules import SCHEDULES
from . import configs
from .inputs import load_yaml, read_text_file

#: ``multipliers.kind`` values: no multipliers, or one of the parametrization's kinds.
MULTIPLIER_CHOICES = ("none", *MULTIPLIER_KINDS)
DTYPES = ("auto", "float32", "bfloat16")
#: ``model.family``: the reference LLaMA (:mod:`widthwise.models.llama`), or a transformers model (``model.hf_config``).
FAMILIES = ("llama", "hf")
DEVICES = ("auto", "cpu", "cuda")
#: ``train.parallel``: one process, DistributedDataParallel or FSDP2 (``fully_shard``) under torchrun.
PARALLEL = ("none", "ddp", "fsdp")
#: Smallest vocabulary: 256 bytes and the end-of-text token.
MIN_VOCAB = 257


def _meta(help: str, **flags: Any) -> dict[str, Any]:
    """A field's metadata: its one-line ``help`` and its ``flags``."""
    return {"help": help, **flags}


def _field(default: Any, help: str, **flags: Any) -> Any:
    """A dataclass field with an immutable ``default``, ``help`` and ``flags`` in its metadata."""
    return field(default=default, metadata=_meta(help, **flags))


class _Section:
    """What every config section shares: its name and the checks its fields' metadata declare."""

    NAME: ClassVar[str]

    def validate(self) -> None:
        """Check each field's ``check`` (``positive`` | ``non_negative``) and ``choices``; :class:`ConfigError`."""
        for f in fields(self):  # type: ignore[arg-type]
            value, where = getattr(self, f.name), f"{self.NAME}.{f.name}"
            check = f.metadata.get("check")
            if check is not None and value is not None:
                bad = value < 0 if check == "non_negative" else value <= 0
                if bad or (isinstance(value, float) and not math.isfinite(value)):
                    need = "non-negative" if check == "non_negative" else "positive"
                    raise ConfigError(f"{where}: must be {need}, got {value!r}")
            choices = f.metadata.get("choices")
            if choices is not None and value not in choices:
                raise ConfigError(f"{where}: unknown value {value!r}; expected one of {', '.join(choices)}")


@dataclass
class ModelConfig(_Section):
    """Shape of the reference LLaMA model (:mod:`widthwise.models.llama`) and its fixed forward multipliers.

    ``vocab_size: null`` takes the tokenizer's size. ``embedding_multiplier``, ``head_multiplier`` and
    ``attention_scale`` left ``null`` take the recipe's values (head ``1/m``, attention ``1/d_head`` for muP-style
    recipes), in the spirit of Falcon-H1's named multipliers.
    """

    NAME: ClassVar[str] = "model"
    width: int = _field(128, "model width d (hidden size)", check="positive", width=True)
    depth: int = _field(4, "number of transformer blocks", check="positive")
    heads: int = _field(4, "attention heads (must divide width; head dim even for RoPE)", check="positive",
                        width=True)
    kv_heads: int = _field(4, "key/value heads for grouped-query attention (must divide heads)", check="positive",
                           width=True)
    ffn_mult: float = _field(8 / 3, "MLP hidden size as a multiple of width", check="positive")
    vocab_size: int | None = _field(None, "vocabulary size (null: the tokenizer's)", check="positive")
    tie_embeddings: bool = _field(False, "share the embedding and output head weights")
    rope_theta: float = _field(10000.0, "RoPE base frequency", check="positive")
    norm_eps: float = _field(1e-5, "RMSNorm epsilon", check="positive")
    embedding_multiplier: float | None = _field(None, "fixed multiplier on the embedding output (null: the recipe's)",
                                                check="positive", forward=True)
    head_multiplier: float | None = _field(None, "fixed multiplier on the logits (null: the recipe's, 1/m for muP)",
                                           check="positive", forward=True)
    attention_scale: float | None = _field(None, "attention logit scale (null: the recipe's, 1/d_head for muP)",
                                           check="positive", forward=True)
    family: str = _field("llama", "llama (the reference model) or hf (a transformers model of model.hf_config)",
                         choices=FAMILIES)
    hf_config: dict[str, Any] = field(default_factory=dict, metadata=_meta(
        "model.family hf: a transformers config class and its fields, e.g. {class: Qwen2Config}; the shape "
        "(width, depth, heads, vocab, tied) comes from model.*"))

    def validate(self) -> None:
        super().validate()
        if self.family == "hf":
            if not isinstance(self.hf_config.get("class"), str):
                raise ConfigError("model.hf_config: model.family hf needs a config class, e.g. {class: LlamaConfig}")
            forward = next((k for k in ("embedding_multiplier", "head_multiplier", "attention_scale")
                            if getattr(self, k) is not None), None)
            if forward is not None:
                raise ConfigError(f"model.{forward}: not settable with model.family hf (the recipe's forward "
                                  "multipliers apply to the HF modules; override the recipe instead)")
        elif self.hf_config:
            raise ConfigError("model.hf_config: only used with model.family hf")
        if self.width % self.heads:
            raise ConfigError(f"model.heads: {self.heads} does not divide model.width={self.width}")
        if self.heads % self.kv_heads:
            raise ConfigError(f"model.kv_heads: {self.kv_heads} does not divide model.heads={self.heads}")
        if (self.width // self.heads) % 2:
            raise ConfigError(f"model.heads: head dim {self.width // self.heads} (width/heads) must be even for RoPE")
        if self.vocab_size is not None and self.vocab_size < MIN_VOCAB:
            raise ConfigError(f"model.vocab_size: {self.vocab_size} is below 257 (256 bytes + end of text)")


@dataclass
class ScalingConfig(_Section):
    """The width-scaling recipe and the base (proxy) width its LR/WD values refer to.

    ``recipe``: ``sp`` | ``mup`` | ``mup_constant_wd`` | ``robust`` or a path to a recipe YAML file;
    ``overrides``: recipe fields, e.g. ``{wd_exponent: 1.0}``; ``param_scales``: per-parameter LR/WD multipliers
    (:func:`widthwise.planning.apply_scales`). ``base_width: null`` means the model is its own
    base (every multiplier 1).
    """

    NAME: ClassVar[str] = "scaling"
    recipe: str = _field("robust", "width-scaling recipe: sp, mup, mup_constant_wd, robust or a recipe file "
                         "(.yaml/.json)", family=True)
    base_width: int | None = _field(None, "proxy width the base LR/WD refer to (null: the model's own width)",
                                    check="positive")
    overrides: dict[str, Any] = field(default_factory=dict,
                                      metadata=_meta("recipe fields to override, e.g. {wd_exponent: 1.0}"))
    param_scales: dict[str, Any] = field(default_factory=dict, metadata=_meta(
        "LR and WD multipliers on top of the recipe, by parameter-name regex, e.g. "
        "{'mlp.down_proj': {lr: 2, weight_decay: 0.5}}"))

    def validate(self) -> None:
        super().validate()
        if self.recipe not in PRESETS and not self.recipe.endswith((".yaml", ".yml", ".json")):
            raise ConfigError(f"scaling.recipe: unknown recipe {self.recipe!r}; expected one of {', '.join(PRESETS)} "
                              "or a recipe file (.yaml/.json)")


@dataclass
class MultipliersConfig(_Section):
    """Learnable multipliers (arXiv 2601.04890). ``kind: none`` trains without them.

    ``placement``: ``all`` | ``symmetry_free`` | a list of regexes; ``lr: null`` takes ``optim.lr``;
    ``absorb_forward``: start the learnable multipliers of the embedding, query and head at the fixed
    forward multipliers (which then become 1), as the paper does when converting a muP model.
    """

    NAME: ClassVar[str] = "multipliers"
    kind: str = _field("row_col", "learnable multiplier kind (none: no multipliers)", choices=MULTIPLIER_CHOICES,
                       family=True)
    placement: str | list[str] = field(
        default="all", metadata=_meta("which layers get multipliers: all, symmetry_free or a list of regexes"))
    lr: float | None = _field(None, "multipliers' learning rate (null: optim.lr)", check="positive")
    weight_decay: float = _field(DEFAULT_MULTIPLIER_WD, "multipliers' weight decay", check="non_negative")
    init: float = _field(1.0, "initial multiplier value", check="positive")
    absorb_forward: bool = _field(False, "start the learnable multipliers at the fixed forward multipliers")
    max_norm: float | None = _field(None, "clip each multiplier's norm to this (null: no clipping)", check="positive")

    def validate(self) -> None:
        super().validate()
        pl = self.placement
        if isinstance(pl, str) and pl not in PLACEMENTS:
            raise ConfigError(f"multipliers.placement: unknown value {pl!r}; expected {', '.join(PLACEMENTS)} or a "
                              "list of regexes")


@dataclass
class OptimConfig(_Section):
    """Optimizer and its base (base-width) values. ``name: muon`` puts the hidden matrices on Muon.

    ``ns_dtype``: dtype of Muon's Newton-Schulz iteration, ``auto`` (bf16 where bf16 matmuls are fast, else fp32)
    | ``bfloat16`` (bitwise ``torch.optim.Muon`` on CPU) | ``float32``; see :class:`widthwise.optim.muon.BatchedMuon`.
    """

    NAME: ClassVar[str] = "optim"
    name: str = _field("adamw", "optimizer: adamw, or muon on the hidden matrices", choices=OPTIMIZERS, family=True)
    lr: float = _field(3e-3, "base learning rate at the base width", check="positive", tuned=True)
    weight_decay: float = _field(0.1, "base weight decay at the base width", check="non_negative", tuned=True)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95], metadata=_meta("Adam betas, two numbers in [0, 1)"))
    eps: float = _field(1e-8, "Adam epsilon", check="positive")
    grad_clip: float | None = _field(1.0, "gradient norm clip, multipliers excluded (null: off)", check="positive")
    clip_multipliers: bool = _field(False, "count the learnable multipliers in the clipped gradient norm (the "
                                    "paper found it erases their gain; for ablations)")
    muon_lr: float | None = _field(None, "Muon's base learning rate (null: optim.lr)", check="positive")
    adjust_lr_fn: str = _field("match_rms_adamw", "how Muon scales its LR by matrix shape",
                               choices=MUON_ADJUST_LR_FNS)
    ns_dtype: str = _field("auto", "dtype of Muon's Newton-Schulz iteration", choices=NS_DTYPES)

    def validate(self) -> None:
        super().validate()
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas: expected two numbers in [0, 1), got {self.betas!r}")


@dataclass
class ScheduleConfig(_Section):
    """LR schedule relative to each group's LR: ``cosine`` | ``wsd`` | ``constant`` after ``warmup`` steps."""

    NAME: ClassVar[str] = "schedule"
    kind: str = _field("cosine", "LR schedule after warmup", choices=SCHEDULES)
    warmup: int = _field(20, "linear warmup steps", check="non_negative")
    min_ratio: float = _field(0.1, "final LR as a fraction of the peak, in [0, 1]", check="non_negative")
    decay_fraction: float = _field(0.2, "wsd: fraction of the steps spent decaying, in (0, 1]")

    def validate(self) -> None:
        super().validate()
        if self.min_ratio > 1:
            raise ConfigError(f"schedule.min_ratio: must be in [0, 1], got {self.min_ratio}")
        if not 0 < self.decay_fraction <= 1:
            raise ConfigError(f"schedule.decay_fraction: must be in (0, 1], got {self.decay_fraction}")


@dataclass
class TrainConfig(_Section):
    """The loop. ``device``/``dtype``/``compile`` ``auto`` pick the fast path measured on this machine."""

    NAME: ClassVar[str] = "train"
    steps: int = _field(200, "training steps", check="positive", resumable=True)
    batch_size: int = _field(16, "sequences per step", check="positive")
    seq_len: int = _field(128, "tokens per sequence", check="positive")
    grad_accum: int = _field(1, "micro-steps per step: train.batch_size (the global batch) is split over ranks and "
                             "micro-steps", check="positive", resumable=True, runtime=True)
    parallel: str = _field("none", "none, or ddp | fsdp under torchrun (several processes)", choices=PARALLEL,
                           resumable=True, runtime=True)
    dist_timeout_s: float = _field(300.0, "seconds a collective waits for the other ranks before the job fails",
                                   check="positive", resumable=True, runtime=True)
    seed: int = _field(0, "random seed of the initialisation and the batches", check="non_negative", seed=True)
    device: str = _field("auto", "auto, cpu, cuda or cuda:N")
    dtype: str = _field("auto", "compute dtype", choices=DTYPES)
    compile: str | bool = _field("auto", "torch.compile the model: auto, true or false", resumable=True)
    threads: int | None = _field(None, "CPU threads (null: torch's default)", check="positive", resumable=True,
                                 runtime=True)
    flush_subnormals: bool = _field(True, "flush subnormal floats (below 1.2e-38) to zero on the CPU's threads: "
                                    "CPUs take slow paths on them")
    eval_every: int = _field(50, "steps between validation losses", check="positive", resumable=True)
    eval_tokens: int = _field(32768, "validation tokens per evaluation", check="positive")
    checkpoint_every: int = _field(100, "steps between checkpoints", check="positive", resumable=True)
    keep_checkpoints: int = _field(2, "checkpoints kept on disk", check="positive", resumable=True)
    log_every: int = _field(1, "steps between metrics.jsonl lines", check="positive", resumable=True)
    divergence_factor: float | None = _field(1.5, "stop as diverged when the loss exceeds this times its initial "
                                                  "value (null: only on a non-finite loss)", check="positive",
                                             resumable=True)
    sample_tokens: int = _field(120, "tokens sampled from the trained model (0: none)", check="non_negative",
                                resumable=True)
    sample_prompt: str = _field("", "prompt of the sample", resumable=True)
    tensorboard: bool = _field(True, "write TensorBoard event files", resumable=True)
    plots: bool = _field(True, "write plots into the run directory", resumable=True)
    progress: bool = _field(True, "show a progress bar", resumable=True, runtime=True)

    def validate(self) -> None:
        super().validate()
        kind, colon, index = self.device.partition(":")
        if kind not in DEVICES or (colon and (kind != "cuda" or not index.isdigit())):
            raise ConfigError(f"train.device: unknown device {self.device!r}; expected auto, cpu, cuda or cuda:N")
        if self.compile not in ("auto", True, False):
            raise ConfigError(f"train.compile: expected auto, true or false, got {self.compile!r}")
        if self.batch_size % self.grad_accum:
            raise ConfigError(f"train.grad_accum: {self.grad_accum} does not divide train.batch_size={self.batch_size}")


@dataclass
class DataConfig(_Section):
    """Training text: ``path: null`` is the bundled Shakespeare corpus; a file, folder or jsonl otherwise."""

    NAME: ClassVar[str] = "data"
    path: str | None = _field(None, "training text: a file, folder or jsonl (null: bundled Shakespeare)")
    vocab_size: int = _field(4096, "BPE vocabulary size trained on the text", check="positive")
    val_fraction: float = _field(0.05, "fraction of the text held out for validation, in (0, 0.5]")
    split_seed: int = _field(0, "seed of the train/validation split", check="non_negative")
    cache_dir: str | None = _field(None, "where tokenized data is cached (null: the default cache)", resumable=True,
                                   runtime=True)

    def validate(self) -> None:
        super().validate()
        if self.vocab_size < MIN_VOCAB:
            raise ConfigError(f"data.vocab_size: {self.vocab_size} is below 257 (256 bytes + end of text)")
        if not 0 < self.val_fraction <= 0.5:
            raise ConfigError(f"data.val_fraction: must be in (0, 0.5], got {self.val_fraction}")


@dataclass
class DiagnosticsConfig(_Section):
    """Measurements logged to ``diagnostics.jsonl`` every ``every`` steps (``null``: off).

    Top singular values (warm-started power iteration), weight RMS against the AdamW noise equilibrium,
    sublayer gains on the first ``gain_sequences`` validation sequences, multiplier statistics and symmetry
    drift (a warning when a monitor passes ``drift_threshold``, in log2 units: 3 is a factor 8).
    """

    NAME: ClassVar[str] = "diagnostics"
    every: int | None = _field(50, "steps between measurements (null: off)", check="positive", resumable=True)
    spectra: bool = _field(True, "measure top singular values", resumable=True)
    gains: bool = _field(True, "measure sublayer gains", resumable=True)
    gain_sequences: int = _field(4, "validation sequences for the sublayer gains", check="positive", resumable=True)
    drift_threshold: float = _field(3.0, "warn when a drift monitor passes this (log2 units)", check="positive",
                                    resumable=True)


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

    def validate(self) -> None:
        """Every section's checks, then those across sections; :class:`ConfigError` naming the field."""
        for f in fields(self):
            getattr(self, f.name).validate()
        base, width = self.scaling.base_width, self.model.width
        if base is not None and base > width:
            raise ConfigError(f"scaling.base_width: {base} is larger than model.width={width}; the base is the proxy")
        if self.schedule.warmup > self.train.steps:
            raise ConfigError(f"schedule.warmup: {self.schedule.warmup} exceeds train.steps={self.train.steps}")
        if self.optim.clip_multipliers and self.multipliers.max_norm is not None:
            raise ConfigError("optim.clip_multipliers: true clips the multipliers with everything else; "
                              "multipliers.max_norm (their own clip) must then be null")
        if self.model.family == "hf" and self.multipliers.absorb_forward:
            raise ConfigError("multipliers.absorb_forward: not supported with model.family hf (the forward "
                              "multipliers stay fixed parametrizations there)")


_SECTION_TYPES: dict[str, type[_Section]] = {
    cls.NAME: cls for cls in (ModelConfig, ScalingConfig, MultipliersConfig, OptimConfig, ScheduleConfig, TrainConfig,
                              DataConfig, DiagnosticsConfig)}


def config_fields() -> list[tuple[str, dataclasses.Field]]:
    """``(section.key, field)`` of every config field, in section and field order."""
    return [(f"{name}.{f.name}", f) for name, cls in _SECTION_TYPES.items() for f in fields(cls)]


def config_keys(*flags: str, section: str | None = None) -> tuple[str, ...]:
    """Dotted keys of the fields whose metadata sets any of ``flags`` (field order); bare names within ``section``.

    >>> config_keys("runtime")
    ('train.grad_accum', 'train.parallel', 'train.dist_timeout_s', 'train.threads', 'train.progress', 'data.cache_dir')
    >>> config_keys("forward", section="model")
    ('embedding_multiplier', 'head_multiplier', 'attention_scale')
    """
    keys = [key for key, f in config_fields() if any(f.metadata.get(flag) for flag in flags)]
    if section is None:
        return tuple(keys)
    return tuple(key.partition(".")[2] for key in keys if key.startswith(f"{section}."))


def builtin_names() -> list[str]:
    """Names of the built-in configs (``demo``, ``tiny``, ...)."""
    return configs.names()


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
    if path.suffix in (".yaml", ".yml") or os.path.lexists(path):
        text = read_text_file(path, f"config {source}")
    elif source in builtin_names():
        text = resources.files("widthwise.app.configs").joinpath(f"{source}.yaml").read_text(encoding="utf-8")
    else:
        raise ConfigError(f"unknown config {source!r}: not a file and not a built-in ({', '.join(builtin_names())})")
    data = load_yaml(text, f"config {source}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {source}: expected a mapping of sections, got {type(data).__name__}")
    for key in ("plan", "resolved"):  # a run's config.yaml carries these beside the user's config
        data.pop(key, None)
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
    config.validate()
    return config


def _build_section(name: str, values: dict[str, Any]) -> Any:
    cls = _SECTION_TYPES[name]
    hints = _type_hints(cls)
    known = {f.name for f in fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown key {name}.{key}; {name} has {', '.join(sorted(known))}")
        kwargs[key] = _coerce(value, hints[key], f"{name}.{key}")
    return cls(**kwargs)


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """``typing.get_type_hints(cls)``, evaluated once per section (it compiles every annotation: slow)."""
    return typing.get_type_hints(cls)


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
    value = load_yaml(raw, f"--set {key}", raw_if_invalid=True) if raw.strip() else ""
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
