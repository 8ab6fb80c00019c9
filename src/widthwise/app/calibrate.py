"""``widthwise calibrate``: the steady-state runs behind a calibration, as a resumable sweep over widths.

Every run trains at a constant LR (after a short warmup) so that its weights settle into the AdamW (or Muon)
equilibrium. Besides the runs at each width (the sweep in ``OUT``), a 2x2 design at the smallest width (base LR and
WD each times :data:`~widthwise.app.defaults.CALIBRATE_PREMISE_FACTORS`, the sweep in ``OUT/premise``) measures how
the metric responds to LR and WD instead of assuming ``sqrt(lr/wd)``; :mod:`widthwise.app.analysis.calibration` then
fits how sigma_max (of the stored ``V`` by default) or the sublayer gain grows with width and derives the WD exponent
that would hold it constant.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..diagnostics.equilibrium import relaxation_steps
from ..errors import ConfigError
from . import defaults
from .analysis.calibration import Calibration, calibrate_rows, recipe_exponents, resolve_weights, write_calibration
from .config import Config, parse_override
from .setup import load_recipe
from .sweep.driver import run_sweep
from .sweep.spec import SweepSpec, base_config
from .sweep.store import read_results

log = logging.getLogger(__name__)

DEFAULT_CONFIG = defaults.CALIBRATE_CONFIG
DEFAULT_WIDTHS = defaults.CALIBRATE_WIDTHS
DEFAULT_STEPS = defaults.CALIBRATE_STEPS
PREMISE_DIR = "premise"
#: The default config made calibratable: multi-head attention at base width 32 and a WD strong enough that 500
#: steps cover several relaxation times 1/(lr*wd) at every default width.
DEFAULT_SET: dict[str, Any] = {"model.kv_heads": 2, "scaling.base_width": 32, "optim.weight_decay": 1.0}
#: Steady state: a constant LR, nothing else that costs time.
RUN_SET: dict[str, Any] = {"schedule.kind": "constant", "train.plots": False, "train.tensorboard": False,
                           "train.sample_tokens": 0}
MIN_RELAXATIONS = 2.0


def calibration_spec(config: str | None, widths: Sequence[int], steps: int | None, overrides: Sequence[str],
                     seeds: int) -> SweepSpec:
    """The sweep of a calibration: ``config`` at each width, constant LR, ``seeds`` seeds.

    A bad argument is a :class:`ConfigError` whose message starts with its name (``widths: ...``).
    """
    if len(set(widths)) < 3:
        raise ConfigError(f"widths: need at least 3 different widths to fit an exponent, got {list(widths)}")
    fixed: dict[str, Any] = dict(DEFAULT_SET) if config is None else {}
    fixed.update(RUN_SET)
    steps = steps or (DEFAULT_STEPS if config is None else None)
    if steps is not None:
        fixed["train.steps"] = steps
    for text in overrides:
        key, value = parse_override(text)
        fixed[key] = value
    spec = SweepSpec(config or DEFAULT_CONFIG, {"model.width": sorted(set(widths))}, fixed, list(range(seeds)))
    probe = base_config(spec)
    fixed.setdefault("diagnostics.every", max(1, probe.train.steps // 10))
    fixed.setdefault("schedule.warmup", min(probe.schedule.warmup, probe.train.steps // 10))
    return SweepSpec(spec.base, spec.grid, fixed, spec.seeds)


def premise_spec(spec: SweepSpec, factors: Sequence[float] = defaults.CALIBRATE_PREMISE_FACTORS) -> SweepSpec:
    """The (LR, WD) design of a calibration: ``spec``'s runs at its smallest width, the hidden matrices' base LR
    (``optim.muon_lr`` under Muon where set, else ``optim.lr``) and ``optim.weight_decay`` each times ``factors``."""
    config = base_config(spec)
    lr_key = "optim.muon_lr" if config.optim.name == "muon" and config.optim.muon_lr is not None else "optim.lr"
    lr = config.optim.muon_lr if lr_key == "optim.muon_lr" else config.optim.lr
    wd = config.optim.weight_decay
    if wd <= 0:
        raise ConfigError("optim.weight_decay: the (LR, WD) premise needs a positive weight decay, got 0")
    fixed = {k: v for k, v in spec.set.items() if k not in (lr_key, "optim.weight_decay")}
    grid = {"model.width": [min(spec.grid["model.width"])], lr_key: [lr * f for f in factors],
            "optim.weight_decay": [wd * f for f in factors]}
    return SweepSpec(spec.base, grid, fixed, spec.seeds)


def relaxation_times(config: Config, width: int) -> float:
    """How many relaxation times ``1/(lr*wd)`` of a hidden matrix a run at ``width`` covers (warmup counts half),
    with the hidden matrices' LR and WD exponents as the optimizer resolves them (Muon's for ``optim.name: muon``)."""
    e_lr, e_wd = recipe_exponents(load_recipe(config), config.optim.name, config.optim.adjust_lr_fn)
    m = width / (config.scaling.base_width or width)
    steps = config.train.steps - config.schedule.warmup / 2
    return steps / relaxation_steps(config.optim.lr * m ** -e_lr, config.optim.weight_decay * m ** e_wd)


@dataclass(frozen=True)
class CalibrationPlan:
    """What a calibration will run: its sweep, the runs' base config, and the relaxation times each width covers."""

    spec: SweepSpec
    config: Config
    relaxations: dict[int, float]
    premise: SweepSpec | None = None  # the (LR, WD) design; None: a = b = 1/2 assumed

    @property
    def unsettled(self) -> list[int]:
        """Widths covering fewer than :data:`MIN_RELAXATIONS` relaxation times: maybe not in steady state."""
        return [w for w, v in self.relaxations.items() if v < MIN_RELAXATIONS]


@dataclass
class CalibrationRun:
    """What :func:`run_calibration` did: the sweep's exit code and, when it completed, the fit and its files."""

    plan: CalibrationPlan
    exit_code: int
    calibration: Calibration | None = None
    paths: dict[str, Path] = field(default_factory=dict)


def plan_calibration(config: str | None = None, widths: Sequence[int] = DEFAULT_WIDTHS, *, steps: int | None = None,
                     overrides: Sequence[str] = (), seeds: int = 1, premise: str = "measured") -> CalibrationPlan:
    """The calibration of ``config`` (``None``: the calibratable default) at ``widths``, with the (LR, WD) premise
    runs (``premise="measured"``) or without (``"assumed"``); warns (log) about widths that may not reach steady
    state."""
    if premise not in defaults.CALIBRATE_PREMISES:
        raise ConfigError(f"premise: expected one of {', '.join(defaults.CALIBRATE_PREMISES)}, got {premise!r}")
    spec = calibration_spec(config, widths, steps, overrides, seeds)
    base = base_config(spec)
    plan = CalibrationPlan(spec, base, {w: relaxation_times(base, w) for w in spec.grid["model.width"]},
                           premise_spec(spec) if premise == "measured" else None)
    if plan.unsettled:
        log.warning(f"widths {plan.unsettled} cover fewer than {MIN_RELAXATIONS:g} relaxation times 1/(lr*wd): "
                    "they may not be in steady state; raise the steps or optim.weight_decay")
    return plan


def run_calibration(plan: CalibrationPlan, out: Path, *, metric: str = "sigma_max", weights: str | None = None,
                    workers: int | None = None, threads: int | None = None, executor: str = "local",
                    address: str | None = None, progress: bool = True) -> CalibrationRun:
    """Run (or resume) the plan's sweeps, the widths in ``out`` and the (LR, WD) premise in ``out/premise``, fit
    and write recipe.yaml, the JSON and plot. ``weights``: ``stored`` (default for sigma_max) | ``effective``."""
    out = Path(out)
    weights = resolve_weights(metric, weights)  # a bad combination fails before anything runs
    sweeps = [(plan.spec, out)] + ([(plan.premise, out / PREMISE_DIR)] if plan.premise is not None else [])
    for spec, where in sweeps:  # the widths first: out must be a sweep directory before premise/ lands in it
        result = run_sweep(spec, where, workers=workers, threads=threads, executor=executor, address=address,
                           progress=progress)
        if result.exit_code != 0:
            return CalibrationRun(plan, result.exit_code)
    rows = [r for r in read_results(out) if r["status"] == "completed"]
    premise_rows = read_results(out / PREMISE_DIR) if plan.premise is not None else None
    cal = calibrate_rows(rows, metric=metric, weights=weights, premise_rows=premise_rows)
    return CalibrationRun(plan, 0, cal, write_calibration(cal, out))
