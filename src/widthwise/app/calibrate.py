"""``widthwise calibrate``: the steady-state runs behind a calibration, as a resumable sweep over widths.

Every run trains at a constant LR (after a short warmup) so that its weights settle into the AdamW (or Muon)
equilibrium; :mod:`widthwise.app.analysis.calibration` then fits how sigma_max or the sublayer gain grows with width and
derives the WD exponent that would hold it constant.
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
from .analysis.calibration import Calibration, calibrate_rows, recipe_exponents, write_calibration
from .config import Config, parse_override
from .setup import load_recipe
from .sweep.driver import run_sweep
from .sweep.spec import SweepSpec, base_config
from .sweep.store import read_results

log = logging.getLogger(__name__)

DEFAULT_CONFIG = defaults.CALIBRATE_CONFIG
DEFAULT_WIDTHS = defaults.CALIBRATE_WIDTHS
DEFAULT_STEPS = defaults.CALIBRATE_STEPS
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
                     overrides: Sequence[str] = (), seeds: int = 1) -> CalibrationPlan:
    """The calibration of ``config`` (``None``: the calibratable default) at ``widths``; warns (log) about widths
    that may not reach steady state."""
    spec = calibration_spec(config, widths, steps, overrides, seeds)
    base = base_config(spec)
    plan = CalibrationPlan(spec, base, {w: relaxation_times(base, w) for w in spec.grid["model.width"]})
    if plan.unsettled:
        log.warning(f"widths {plan.unsettled} cover fewer than {MIN_RELAXATIONS:g} relaxation times 1/(lr*wd): "
                    "they may not be in steady state; raise the steps or optim.weight_decay")
    return plan


def run_calibration(plan: CalibrationPlan, out: Path, *, metric: str = "sigma_max", workers: int | None = None,
                    threads: int | None = None, executor: str = "local", address: str | None = None,
                    progress: bool = True) -> CalibrationRun:
    """Run (or resume) the plan's sweep in ``out``, fit the width exponent and write recipe.yaml, the JSON and plot."""
    result = run_sweep(plan.spec, out, workers=workers, threads=threads, executor=executor, address=address,
                       progress=progress)
    if result.exit_code != 0:
        return CalibrationRun(plan, result.exit_code)
    rows = [r for r in read_results(out) if r["status"] == "completed"]
    cal = calibrate_rows(rows, metric=metric)
    return CalibrationRun(plan, 0, cal, write_calibration(cal, out))
