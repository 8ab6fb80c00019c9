"""Sweep files: a base config, a grid of dotted keys, fixed overrides and seeds, expanded into grid points.

```yaml
base: tiny                      # built-in config name, or a YAML path (relative to this file)
grid:                           # every combination runs
  model.width: [32, 64, 128]    # heads follow the width at a fixed head dim
  optim.lr: [3e-3, 1e-2, 3e-2]
  scaling.recipe: [sp, robust]
set: {train.steps: 100}         # fixed overrides (optional)
seeds: [0, 1]                   # train.seed values (optional)
```

Each point's :class:`~widthwise.app.config.Config` is validated here, before anything runs, and named by a
stable hash of its config (:func:`run_id`), so a rerun finds its runs again.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ...errors import ConfigError, SweepError
from ..config import Config, apply_overrides, builtin_names, config_keys, load_config, parse_override
from ..inputs import load_yaml, read_text_file
from ..setup import at_width, plan_for

SWEEP_KEYS = ("base", "grid", "set", "seeds")
#: Config keys that say how a run is executed or watched, not what it computes: not part of its identity.
RUNTIME_KEYS = config_keys("runtime")
#: Short labels of common grid keys in run directory names.
_SHORT = {"model.width": "w", "optim.lr": "lr", "optim.weight_decay": "wd", "train.seed": "s"}


@dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep file. ``base`` is a built-in name or an absolute path."""

    base: str
    grid: dict[str, list[Any]]
    set: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"base": self.base, "grid": self.grid}
        if self.set:
            data["set"] = self.set
        if self.seeds:
            data["seeds"] = self.seeds
        return data

    def same_experiment(self, other: SweepSpec) -> bool:
        """Whether ``other`` only adds or drops grid values or seeds (same base, fixed overrides and grid keys)."""
        return (self.base, self.set, list(self.grid)) == (other.base, other.set, list(other.grid))


@dataclass(frozen=True)
class Point:
    """One grid point: the values it sets, its validated config, its id and run directory name."""

    params: dict[str, Any]
    config: Config
    run_id: str
    name: str


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and check a sweep file (:class:`SweepError` naming the file and field otherwise)."""
    path = Path(path)
    if not os.path.lexists(path):
        raise SweepError(f"{path}: no such sweep file")
    data = load_yaml(read_text_file(path, f"sweep file {path}", SweepError), f"sweep file {path}", SweepError)
    return parse_sweep(data, path.parent, str(path))


def parse_sweep(data: Any, root: Path = Path("."), where: str = "sweep") -> SweepSpec:
    """A :class:`SweepSpec` from the mapping of a sweep file; relative ``base`` paths resolve against ``root``."""
    if not isinstance(data, Mapping):
        raise SweepError(f"{where}: expected a mapping with keys {', '.join(SWEEP_KEYS)}")
    unknown = sorted(set(data) - set(SWEEP_KEYS))
    if unknown:
        raise SweepError(f"{where}: unknown key {unknown[0]!r}; a sweep file has {', '.join(SWEEP_KEYS)}")
    base = data.get("base")
    if not isinstance(base, str) or not base:
        raise SweepError(f"{where}: base: expected a built-in config name ({', '.join(builtin_names())}) or a path")
    if base not in builtin_names():
        base_path = (root / base).resolve()
        if not base_path.is_file():
            raise SweepError(f"{where}: base: {base} is neither a built-in config ({', '.join(builtin_names())}) "
                             "nor an existing file")
        base = str(base_path)
    grid = _check_grid(data.get("grid"), where)
    fixed = _check_set(data.get("set") or {}, where)
    for key in grid:
        if key in fixed:
            raise SweepError(f"{where}: {key} is both in grid and set; keep it in one")
    seeds = _check_seeds(data.get("seeds"), where)
    if seeds and "train.seed" in grid:
        raise SweepError(f"{where}: train.seed is in grid and seeds are given; use one of them")
    return SweepSpec(base, grid, fixed, seeds)


def _check_key(key: Any, where: str) -> str:
    if not isinstance(key, str):
        raise SweepError(f"{where}: key {key!r} is not a section.key string")
    try:
        parse_override(f"{key}=0")
    except ConfigError as err:
        raise SweepError(f"{where}: {err}") from None
    return key


def _check_grid(grid: Any, where: str) -> dict[str, list[Any]]:
    if not isinstance(grid, Mapping) or not grid:
        raise SweepError(f"{where}: grid: expected a mapping of section.key to a list of values, e.g. "
                         "{optim.lr: [1e-3, 3e-3]}")
    out: dict[str, list[Any]] = {}
    for key, values in grid.items():
        _check_key(key, f"{where}: grid")
        if not isinstance(values, list) or not values:
            raise SweepError(f"{where}: grid: {key}: expected a non-empty list of values, got {values!r}")
        seen = [json.dumps(v, sort_keys=True, default=str) for v in values]
        if len(set(seen)) != len(seen):
            raise SweepError(f"{where}: grid: {key}: repeated value in {values!r}")
        out[key] = list(values)
    return out


def _check_set(fixed: Any, where: str) -> dict[str, Any]:
    if not isinstance(fixed, Mapping):
        raise SweepError(f"{where}: set: expected a mapping of section.key to a value")
    for key in fixed:
        _check_key(key, f"{where}: set")
    return dict(fixed)


def _check_seeds(seeds: Any, where: str) -> list[int]:
    if seeds is None:
        return []
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    ok = isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                   for s in seeds)
    if not ok or len(set(seeds)) != len(seeds):
        raise SweepError(f"{where}: seeds: expected a list of distinct non-negative integers, got {seeds!r}")
    return list(seeds)


def base_config(spec: SweepSpec) -> Config:
    """The base config with the fixed overrides applied (``ConfigError`` names the field)."""
    config = load_config(spec.base)
    return apply_overrides(config, spec.set) if spec.set else config


def expand(spec: SweepSpec, progress: bool = False) -> list[Point]:
    """Every grid point (product of the grid, then seeds), each validated; :class:`ConfigError` names the point.

    A varied ``model.width`` keeps the head dim and query/key-value group ratio of the base config (with ``set``
    applied): heads scale with width, unless the grid varies heads too. A base config without
    ``scaling.base_width`` takes the smallest grid width as its base: the proxy whose LR and WD the grid values are.

    Points are identified by their config (:func:`run_id`): two that are the same run (equal values written
    differently, ``0.01`` and ``1e-2``, or values of runtime-only keys) are a :class:`SweepError`. The model and
    plan are checked once per distinct shape (:func:`_build_key`), so a 10,000-point grid of LR x WD validates in
    seconds; ``progress`` shows a bar on stderr for large grids.
    """
    config = base_config(spec)
    widths = spec.grid.get("model.width")
    if widths is not None and config.scaling.base_width is None:
        if not all(isinstance(w, int) and not isinstance(w, bool) for w in widths):
            raise ConfigError(f"grid: model.width: expected integers, got {widths!r}")
        config = apply_overrides(config, {"scaling.base_width": min(widths)})
    keep_heads = any(k in spec.grid for k in ("model.heads", "model.kv_heads"))
    axes = [[(key, v) for v in values] for key, values in spec.grid.items()]
    if spec.seeds:
        axes.append([("train.seed", s) for s in spec.seeds])
    points: list[Point] = []
    seen: dict[str, dict[str, Any]] = {}
    checked: set[str] = set()
    total = math.prod(len(axis) for axis in axes)
    bar = tqdm(total=total, unit="point", desc="validating", file=sys.stderr, leave=False,
               disable=not progress or total < 200, dynamic_ncols=True, mininterval=0.5)
    with bar:
        for combo in itertools.product(*axes):
            params = dict(combo)
            try:
                point = config
                overrides = dict(params)
                if "model.width" in params and not keep_heads:
                    point = at_width(point, overrides.pop("model.width"), what="grid: model.width")
                point = apply_overrides(point, overrides)
                key = _build_key(point)
                if key not in checked:
                    _check_buildable(point)
                    checked.add(key)
            except ConfigError as err:
                raise ConfigError(f"grid point {_show(params)}: {err}") from None
            rid = run_id(point)
            if rid in seen:
                raise SweepError(f"grid points {_show(seen[rid])} and {_show(params)} are the same run (equal values "
                                 "written differently, or values of runtime-only keys); drop one of them")
            seen[rid] = params
            points.append(Point(params, point, rid, run_name(params, rid)))
            bar.update(1)
    return points


def _build_key(config: Config) -> str:
    """What :func:`_check_buildable` depends on: the model, scaling and multiplier sections, the optimizer's kind,
    the sequence length and the vocabulary; points equal in these (an LR x WD grid) are checked once."""
    data = config.to_dict()
    used = {name: data[name] for name in ("model", "scaling", "multipliers")}
    used["optim"] = {k: data["optim"][k] for k in ("name", "adjust_lr_fn")}
    used["train"] = {"seq_len": data["train"]["seq_len"]}
    used["data"] = {"vocab_size": data["data"]["vocab_size"]}
    return json.dumps(used, sort_keys=True, default=str)


def _check_buildable(config: Config) -> None:
    """Model shapes, recipe and plan, checked on the meta device without data: what ``build`` would reject."""
    plan_for(config, config.model.vocab_size or config.data.vocab_size)


def _show(params: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in params.items()) + "}"


@functools.cache
def _defaults() -> dict[str, Any]:
    return Config().to_dict()


def run_id(config: Config) -> str:
    """12 hex digits of the SHA-256 of the config's non-default fields without :data:`RUNTIME_KEYS`: the same
    point, the same id. Fields at their default are left out, so a widthwise that adds a config field (at a
    default that changes nothing) still finds the runs of a sweep started before it."""
    data = config.to_dict()
    defaults = _defaults()
    for section, values in data.items():
        for name in [n for n, v in values.items() if n in defaults[section] and defaults[section][n] == v]:
            del values[name]
    for key in RUNTIME_KEYS:
        section, name = key.split(".")
        data[section].pop(name, None)
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def run_name(params: Mapping[str, Any], rid: str) -> str:
    """A readable, unique directory name: the grid values (``w64-lr0.003-robust``) and the id's first 6 digits."""
    parts = []
    for key, value in params.items():
        shown = f"{value:g}" if isinstance(value, float) else Path(str(value)).stem if "/" in str(value) else value
        label = _SHORT.get(key, "" if key in ("scaling.recipe", "optim.name", "multipliers.kind") else
                           key.split(".")[-1] + "=")
        parts.append(f"{label}{shown}")
    text = re.sub(r"[^A-Za-z0-9._=+-]+", "_", "-".join(parts))[:80]
    return f"{text}-{rid[:6]}" if text else rid
