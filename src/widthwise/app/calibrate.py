"""``widthwise calibrate``: the steady-state runs behind a calibration, as a resumable sweep over widths.

Every run trains at a constant LR (after a short warmup) so that its weights settle into the AdamW (or Muon)
equilibrium; :mod:`widthwise.app.analysis.calibration` then fits how sigma_max or the sublayer gain grows with width and
derives the WD exponent that would hold it constant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from ..diagnostics.equilibrium import relaxation_steps
from ..errors import ConfigError
from .analysis.calibration import calibrate_rows, recipe_exponents, write_calibration
from .config import Config, parse_override
from .setup import load_recipe
from .sweep.driver import run_sweep
from .sweep.spec import SweepSpec, base_config
from .sweep.store import read_results

DEFAULT_CONFIG = "tiny"
DEFAULT_WIDTHS = (32, 64, 128)
DEFAULT_STEPS = 500
#: The default config made calibratable: multi-head attention at base width 32 and a WD strong enough that 500
#: steps cover several relaxation times 1/(lr*wd) at every default width.
DEFAULT_SET: dict[str, Any] = {"model.kv_heads": 2, "scaling.base_width": 32, "optim.weight_decay": 1.0}
#: Steady state: a constant LR, nothing else that costs time.
RUN_SET: dict[str, Any] = {"schedule.kind": "constant", "train.plots": False, "train.tensorboard": False,
                           "train.sample_tokens": 0}
MIN_RELAXATIONS = 2.0


def calibration_spec(config: str | None, widths: Sequence[int], steps: int | None, overrides: Sequence[str],
                     seeds: int) -> SweepSpec:
    """The sweep of a calibration: ``config`` at each width, constant LR, ``seeds`` seeds."""
    if len(set(widths)) < 3:
        raise ConfigError(f"--widths: need at least 3 different widths to fit an exponent, got {list(widths)}")
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


def run_calibration(args: argparse.Namespace) -> int:
    """The ``widthwise calibrate`` command: run (or resume) the sweep, fit, write recipe.yaml and the plot."""

    widths = args.widths or list(DEFAULT_WIDTHS)
    spec = calibration_spec(args.config, widths, args.steps, args.overrides, args.seeds)
    config = base_config(spec)
    covered = {w: relaxation_times(config, w) for w in spec.grid["model.width"]}
    print(f"calibrating recipe {config.scaling.recipe} with {config.optim.name} at widths "
          f"{', '.join(map(str, covered))}: {config.train.steps} steps at lr {config.optim.lr:g}, wd "
          f"{config.optim.weight_decay:g} (base width {config.scaling.base_width}); relaxation times covered: "
          + ", ".join(f"{v:.1f}" for v in covered.values()))
    low = [w for w, v in covered.items() if v < MIN_RELAXATIONS]
    if low:
        print(f"widthwise: warning: widths {low} cover fewer than {MIN_RELAXATIONS:g} relaxation times 1/(lr*wd): "
              "they may not be in steady state; raise --steps or optim.weight_decay")
    result = run_sweep(spec, args.out, workers=args.workers, threads=args.threads, executor=args.executor,
                       address=args.address, progress=not args.quiet)
    if result.exit_code != 0:
        return result.exit_code
    rows = [r for r in read_results(args.out) if r["status"] == "completed"]
    cal = calibrate_rows(rows, metric=args.metric)
    paths = write_calibration(cal, args.out)
    print(calibration_table(cal))
    for warning in cal.warnings:
        print(f"widthwise: warning: {warning}", file=sys.stderr)
    print(f"{cal.exponent_field} = {cal.derived_exponent:g} (runs used {cal.wd_exponent:g}; alpha {cal.alpha:.3f})")
    for label, path in paths.items():
        print(f"  {label}: {path}")
    print(f"  use it: widthwise train CONFIG --set scaling.recipe={paths['recipe']}")
    return 0


def calibration_table(cal: Any) -> str:
    """Per layer type and pooled: the measured width exponent p, its fit quality, alpha and the derived exponent."""
    rows = [("layer", f"p ({cal.metric} ~ d^p)", "r2", "alpha", cal.exponent_field)]
    for name, layer in [*cal.layers.items(), ("pooled", cal.pooled)]:
        rows.append((name, f"{layer.fit.exponent:+.3f}", f"{layer.fit.r2:.3f}", f"{layer.alpha:.3f}",
                     f"{layer.wd_exponent:.3f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)
