"""``widthwise calibrate``: fit a recipe's WD exponent for a model and optimizer, and print the fit."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from ..app import defaults
from ..errors import ConfigError
from ..tables import format_table
from .args import Subparsers, add_execution, add_overrides, builtin_configs, flag_error, int_list, positive_int

log = logging.getLogger(__name__)


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "calibrate", help="fit a recipe's WD exponent for your model and optimizer",
        description="Train short steady-state runs at 3+ widths, fit the width exponent of sigma_max (or the sublayer "
                    "gain) per layer type, and derive the WD exponent that keeps it width-invariant; write "
                    "OUT/recipe.yaml (usable as scaling.recipe), OUT/calibration.json and OUT/calibration.png.",
        epilog=builtin_configs(),
    )
    p.add_argument("config", nargs="?", default=None,
                   help=f"YAML config file or built-in name (default: {defaults.CALIBRATE_CONFIG} with calibration "
                        "settings)")
    p.add_argument("--out", type=Path, required=True, help="output directory (a sweep directory: resumable)")
    p.add_argument("--widths", type=int_list, help="comma-separated widths, at least 3 (default: "
                                                   f"{','.join(map(str, defaults.CALIBRATE_WIDTHS))})")
    p.add_argument("--steps", type=positive_int, help="steps per run at a constant LR (default: "
                                                      f"{defaults.CALIBRATE_STEPS} with the default config)")
    p.add_argument("--metric", choices=("sigma_max", "gain"), default="sigma_max", help="what to keep invariant")
    p.add_argument("--seeds", type=positive_int, default=1, help="seeds per width (default: 1)")
    add_overrides(p)
    add_execution(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..app.calibrate import plan_calibration, run_calibration

    try:
        plan = plan_calibration(args.config, args.widths or defaults.CALIBRATE_WIDTHS, steps=args.steps,
                                overrides=args.overrides, seeds=args.seeds)
    except ConfigError as err:
        raise flag_error(err) if str(err).startswith("widths:") else err from None
    c = plan.config
    print(f"calibrating recipe {c.scaling.recipe} with {c.optim.name} at widths "
          f"{', '.join(map(str, plan.relaxations))}: {c.train.steps} steps at lr {c.optim.lr:g}, wd "
          f"{c.optim.weight_decay:g} (base width {c.scaling.base_width}); relaxation times covered: "
          + ", ".join(f"{v:.1f}" for v in plan.relaxations.values()))
    done = run_calibration(plan, args.out, metric=args.metric, workers=args.workers, threads=args.threads,
                           executor=args.executor, address=args.address, progress=not args.quiet)
    cal = done.calibration
    if done.exit_code != 0 or cal is None:
        return done.exit_code
    print(calibration_table(cal))
    for warning in cal.warnings:
        log.warning(warning)
    print(f"{cal.exponent_field} = {cal.derived_exponent:g} (runs used {cal.wd_exponent:g}; alpha {cal.alpha:.3f})")
    for label, path in done.paths.items():
        print(f"  {label}: {path}")
    print(f"  use it: widthwise train CONFIG --set scaling.recipe={done.paths['recipe']}")
    return 0


def calibration_table(cal: Any) -> str:
    """Per layer type and pooled: the measured width exponent p, its fit quality, alpha and the derived exponent."""
    rows = [[name, f"{layer.fit.exponent:+.3f}", f"{layer.fit.r2:.3f}", f"{layer.alpha:.3f}",
             f"{layer.wd_exponent:.3f}"] for name, layer in [*cal.layers.items(), ("pooled", cal.pooled)]]
    return format_table(rows, header=["layer", f"p ({cal.metric} ~ d^p)", "r2", "alpha", cal.exponent_field],
                        indent="  ")
