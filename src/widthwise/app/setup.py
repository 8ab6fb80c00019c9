"""Build a run's pieces from a :class:`Config`: recipe, model and its base, multipliers, plan, optimizer."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..clipping import ClipGroups, clip_grad_norm_, clip_groups
from ..errors import ConfigError
from ..forward import named_forward_multipliers
from ..initialization import init_weights
from ..models.llama import Llama, LlamaConfig
from ..multipliers import add_multipliers
from ..optim.build import build_optimizer
from ..planning import Plan, WidthConstantMultipliersWarning, plan
from ..recipes import Recipe, get_recipe
from ..schedules import lr_schedule
from .config import Config, apply_overrides
from .data import TokenData, prepare_data
from .defaults import default_cache_dir
from .inputs import load_yaml, read_text_file
from .runtime import resolve_device, resolve_ns_dtype


def load_data(config: Config) -> TokenData:
    """The config's tokenized train/validation data (``data.cache_dir``, else :func:`default_cache_dir`)."""
    d, t = config.data, config.train
    cache = Path(d.cache_dir) if d.cache_dir else default_cache_dir()
    return prepare_data(d.path, d.vocab_size, t.seq_len, cache, d.val_fraction, d.split_seed)


def config_device(config: Config) -> torch.device:
    """``train.device`` resolved (``auto``: CUDA when present); a device that is not there is a ConfigError."""
    try:
        return resolve_device(config.train.device)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def head_dim(config: Config) -> int:
    """The head dimension of ``config``'s model, kept when the width changes (:func:`at_width`)."""
    return config.model.width // config.model.heads


def heads_at(config: Config, width: int) -> tuple[int, int]:
    """``(heads, kv_heads)`` at ``width``: the config's head dim and its query/key-value group ratio where possible."""
    heads = width // head_dim(config)
    group = config.model.heads // config.model.kv_heads
    return heads, (heads // group if heads % group == 0 else heads)


def at_width(config: Config, width: int, what: str = "model.width") -> Config:
    """``config`` at ``width`` with its head dim and depth kept (heads scale with width); ``what`` names the source."""
    dh = head_dim(config)
    if isinstance(width, bool) or not isinstance(width, int) or width < 1 or width % dh:
        raise ConfigError(f"{what}: {width!r} is not a positive multiple of the head dim {dh} (model.width / "
                          "model.heads)")
    heads, kv_heads = heads_at(config, width)
    return apply_overrides(config, {"model.width": width, "model.heads": heads, "model.kv_heads": kv_heads})


def load_recipe(config: Config) -> Recipe:
    """The recipe ``scaling.recipe`` names (a preset or a YAML/JSON file) with ``scaling.overrides``."""
    name = config.scaling.recipe
    source: str | Mapping[str, Any] = name
    if name.endswith((".yaml", ".yml", ".json")):
        where = f"scaling.recipe: recipe file {name}"
        source = load_yaml(read_text_file(Path(name), where), where)  # JSON is YAML
        if isinstance(source, Mapping) and "recipe" in source:  # a file `widthwise calibrate` wrote
            source = source["recipe"]
    try:
        return get_recipe(source, **config.scaling.overrides)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"scaling.recipe: {err}") from None


def _base_heads(heads: int, kv_heads: int, width: int, base_width: int) -> tuple[int, int]:
    """Heads of the base model: keep the head dimension when the base width allows it, else keep the heads.

    With the head dimension kept, the base's KV heads keep the query/KV group ratio where its head count allows,
    else they are the largest divisor of its heads that keeps at least that ratio (a GQA base narrower than the
    ratio, e.g. one head where the model groups two queries per KV head: one KV head). The KV projections then
    scale their fan-out by a different ratio than their fan-in, which the plan handles per dimension (their
    width multiplier is the fan-in's, as in muP).
    """
    head_dim = width // heads
    if base_width % head_dim == 0:
        base_heads = base_width // head_dim
        group = heads // kv_heads
        base_kv = max(1, base_heads // group)
        while base_heads % base_kv:
            base_kv -= 1
        return base_heads, base_kv
    return heads, kv_heads


def model_configs(config: Config, vocab_size: int, recipe: Recipe) -> tuple[LlamaConfig, LlamaConfig]:
    """The model's and its base's :class:`LlamaConfig`, forward multipliers resolved from the recipe."""
    m = config.model
    base_width = config.scaling.base_width or m.width
    base_heads, base_kv = _base_heads(m.heads, m.kv_heads, m.width, base_width)
    if base_width % base_heads or (base_width // base_heads) % 2:
        raise ConfigError(f"scaling.base_width: {base_width} does not split into {base_heads} heads of even size")
    common = dict(depth=m.depth, vocab_size=vocab_size, tie_embeddings=m.tie_embeddings, rope_theta=m.rope_theta,
                  norm_eps=m.norm_eps, max_seq_len=config.train.seq_len)
    base_cfg = LlamaConfig(width=base_width, heads=base_heads, kv_heads=base_kv, ffn_mult=m.ffn_mult, **common)
    # Width scaling needs the FFN hidden size exactly proportional to width: round it at the base width, scale it.
    hidden = base_cfg.ffn_hidden * m.width / base_width
    if hidden != int(hidden):
        raise ConfigError(f"model.width: {m.width} scales the base FFN ({base_cfg.ffn_hidden} at base width "
                          f"{base_width}) to a non-integer {hidden:g}; pick a width that is a multiple of the base's "
                          "ratio")
    fm = named_forward_multipliers(recipe, m.width, base_width, m.width // m.heads, base_width // base_heads)
    for key in fm:
        if getattr(m, key) is not None:
            fm[key] = getattr(m, key)
    model_cfg = LlamaConfig(width=m.width, heads=m.heads, kv_heads=m.kv_heads, ffn_mult=int(hidden) / m.width,
                            multiple_of=1, **common, **fm)
    for cfg in (model_cfg, base_cfg):
        try:
            cfg.validate()
        except ValueError as err:
            raise ConfigError(str(err)) from None
    return model_cfg, base_cfg


def absorbed_inits(config: Config, model_cfg: LlamaConfig, targets: list[str]) -> tuple[dict[str, float], LlamaConfig]:
    """With ``multipliers.absorb_forward``: move fixed forward multipliers into the learnable ones' init.

    The embedding multiplier goes to the embedding's multipliers, the attention factor over the standard
    ``1/sqrt(d_head)`` to the query projections', the head multiplier to the head's (only where the
    placement gives those matrices multipliers; the others stay fixed). Returns ``{regex: init}`` and the
    model config with the absorbed multipliers set to 1.
    """
    mult = config.multipliers
    if not mult.absorb_forward or mult.kind == "none":
        return {}, model_cfg
    inits: dict[str, float] = {}
    changes: dict[str, Any] = {}
    standard = 1 / math.sqrt(model_cfg.head_dim)
    query = (model_cfg.attention_scale or standard) / standard
    for regex, value, key, fixed in ((r"^embed\.", model_cfg.embedding_multiplier, "embedding_multiplier", 1.0),
                                     (r"\.q_proj\.", query, "attention_scale", standard),
                                     (r"^head\.", model_cfg.head_multiplier, "head_multiplier", 1.0)):
        if value != 1.0 and any(re.search(regex, t) for t in targets):
            inits[regex] = value * mult.init
            changes[key] = fixed
    return inits, dataclasses.replace(model_cfg, **changes)


@dataclass
class Built:
    """A ready model with its plan, optimizer and schedule."""

    model: Llama
    model_config: LlamaConfig  # as built (absorbed forward multipliers set to 1)
    declared_config: LlamaConfig  # before absorption: what the config resolves to
    base_config: LlamaConfig
    recipe: Recipe
    plan: Plan
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    multiplier_names: list[str]
    #: The parameters split for clipping, made at the first update (after any sharding has replaced parameters)
    clip_groups: ClipGroups | None = None


def _add_multipliers(model: nn.Module, config: Config, init: Mapping[str, float] | float) -> list[str]:
    mult = config.multipliers
    if mult.kind == "none":
        return []
    try:
        with warnings.catch_warnings():  # placement "all" skips a tied embedding, as the config asks: no news
            warnings.filterwarnings("ignore", message=".*tied weights.*")
            return add_multipliers(model, kind=mult.kind, placement=mult.placement, init=init)
    except ValueError as err:
        raise ConfigError(f"multipliers: {err}") from None


def new_model(config: Config, cfg: LlamaConfig) -> nn.Module:
    """The model of ``config``'s family at the shapes of ``cfg``: the reference Llama, or an HF model
    (``model.family: hf``, :mod:`widthwise.app.hf_family`)."""
    if config.model.family == "hf":
        from .hf_family import build_hf

        return build_hf(cfg, config.model.hf_config)
    return Llama(cfg)


def _planned_models(config: Config, vocab_size: int, meta: bool = False):
    """The model, its base (meta), their configs, recipe, multiplier names and plan; ``meta``: the model too."""
    recipe = load_recipe(config)
    model_cfg, base_cfg = model_configs(config, vocab_size, recipe)
    declared_cfg = model_cfg
    targets = []
    if config.multipliers.absorb_forward and config.multipliers.kind != "none":
        with torch.device("meta"):
            targets = _add_multipliers(Llama(model_cfg), config, 1.0)
    inits, model_cfg = absorbed_inits(config, model_cfg, targets)
    init: Mapping[str, float] | float = {**inits, ".": config.multipliers.init} if inits else config.multipliers.init
    if not meta:
        torch.manual_seed(config.train.seed)
    with torch.device("meta") if meta else contextlib.nullcontext():
        model = new_model(config, model_cfg)
    with torch.device("meta"):
        base = new_model(config, base_cfg)
    names = _add_multipliers(model, config, init)
    _add_multipliers(base, config, init)
    try:
        with warnings.catch_warnings():
            if meta:  # a check or a table (every point of a sweep is planned first): the run itself warns
                warnings.simplefilter("ignore", WidthConstantMultipliersWarning)
            the_plan = plan(model, base=base, recipe=recipe, optimizer=config.optim.name,
                            muon_adjust_lr_fn=config.optim.adjust_lr_fn, multiplier_lr=config.multipliers.lr,
                            multiplier_weight_decay=config.multipliers.weight_decay,
                            forward_multipliers=config.model.family == "hf",  # ours: config fields
                            scales=config.scaling.param_scales)
    except ValueError as err:
        text = str(err)
        if text.startswith("scales: "):
            raise ConfigError(f"scaling.param_scales: {text.removeprefix('scales: ')}") from None
        raise ConfigError(f"scaling.base_width: {err}") from None
    return model, model_cfg, declared_cfg, base_cfg, recipe, names, the_plan


def plan_for(config: Config, vocab_size: int) -> Plan:
    """The plan of ``config``'s model, built on the meta device (no memory, no init): checks and plan tables."""
    return _planned_models(config, vocab_size, meta=True)[-1]


#: Bytes a trained parameter takes at least: its fp32 value, gradient and two AdamW moments.
BYTES_PER_PARAMETER = 16


def device_memory(device: torch.device) -> int:
    """Bytes of memory on ``device``: the GPU's total, else this machine's physical memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[1]
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(config: Config, vocab_size: int, device: torch.device) -> None:
    """Refuse, from the meta model's parameter count, a model whose training state cannot fit in ``device``'s
    memory (:data:`BYTES_PER_PARAMETER` each; under FSDP that over the ranks, at least the fp32 values), before
    anything is allocated."""
    model_cfg, _ = model_configs(config, vocab_size, load_recipe(config))
    try:
        with torch.device("meta"):
            count = sum(p.numel() for p in new_model(config, model_cfg).parameters())
    except (RuntimeError, OverflowError):  # sizes past int64 overflow even on the meta device
        raise ConfigError(f"model.width: {config.model.width} is too large for any tensor (sizes overflow)") from None
    per_parameter = BYTES_PER_PARAMETER
    if config.train.parallel == "fsdp":  # sharded over the ranks, but each rank first builds the whole fp32 model
        per_parameter = max(4, BYTES_PER_PARAMETER // int(os.environ.get("WORLD_SIZE", "1") or 1))
    need, have = count * per_parameter, device_memory(device)
    if need > have:
        raise ConfigError(f"model.width: {config.model.width} (depth {config.model.depth}) makes {count:,} parameters, "
                          f"{need / 2**30:,.1f} GiB to train, more than the {have / 2**30:,.1f} GiB of {device.type} "
                          "memory; choose a smaller model")


def build(config: Config, vocab_size: int, device: torch.device,
          wrap: Callable[[Llama], Any] | None = None) -> Built:
    """Model (initialised by the plan, seeded by ``train.seed``), plan, optimizer and LR schedule.

    ``wrap`` (FSDP2's sharding, in place) runs on the planned, initialised model before the optimizer is built.
    """
    check_fits(config, vocab_size, device)
    model, model_cfg, declared_cfg, base_cfg, recipe, names, the_plan = _planned_models(config, vocab_size)
    init_weights(model, the_plan, generator=torch.Generator().manual_seed(config.train.seed),
                 forward_multipliers=config.model.family == "hf")
    model.to(device)
    if wrap is not None:
        wrap(model)
    optimizer = make_optimizer(config, model, the_plan, device)
    s = config.schedule
    scheduler = lr_schedule(optimizer, s.warmup, config.train.steps, s.kind, min_ratio=s.min_ratio,
                            decay_fraction=s.decay_fraction)
    return Built(model, model_cfg, declared_cfg, base_cfg, recipe, the_plan, optimizer, scheduler, names)


def make_optimizer(config: Config, model: nn.Module, the_plan: Plan, device: torch.device) -> torch.optim.Optimizer:
    """The optimizer of ``config.optim`` over ``model``'s parameters, as ``the_plan`` groups them."""
    o = config.optim
    try:
        return build_optimizer(
            model, the_plan, lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas), eps=o.eps,
            muon_lr=o.muon_lr, check_forward_multipliers=False,
            ns_dtype=resolve_ns_dtype(o.ns_dtype, device) if o.name == "muon" else o.ns_dtype,
        )
    except ValueError as err:
        raise ConfigError(f"optim: {err}") from None


def resolved_config(built: Built, extra: Mapping[str, Any]) -> dict[str, Any]:
    """A run's ``resolved:`` section: the model and scaling fields as built (whatever the config left ``null``
    resolved), then ``extra`` (runtime, data). The user's fields are never overwritten."""
    declared = built.declared_config  # before absorption: what the config resolves to
    model = {"vocab_size": built.model_config.vocab_size,
             **{k: getattr(declared, k) for k in ("embedding_multiplier", "head_multiplier", "attention_scale")}}
    return {"model": model, "scaling": {"base_width": built.base_config.width}, **json.loads(json.dumps(dict(extra)))}


def apply_update(built: Built, config: Config) -> torch.Tensor | float:
    """After ``backward()``: clip (multipliers apart), optimizer and schedule step, zero the grads; the grad norm."""
    clip = config.optim.grad_clip
    if built.clip_groups is None:  # one walk over the modules per run, not per step
        built.clip_groups = clip_groups(built.model)
    norm = clip_grad_norm_(built.model, clip if clip is not None else math.inf,
                           multiplier_max_norm=config.multipliers.max_norm,
                           include_multipliers=config.optim.clip_multipliers, groups=built.clip_groups)
    built.optimizer.step()
    built.scheduler.step()
    built.optimizer.zero_grad(set_to_none=True)
    return norm
