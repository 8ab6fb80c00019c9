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
        description="Train short steady-state runs at 3+ widths and a 2x2 (LR x {1,2}, WD x {1,2}) design at the "
                    "smallest width (OUT/premise); fit sigma_max ~ lr^a wd^-b and the width exponent p of sigma_max "
                    "(of the stored V by default; or the sublayer gain) per layer type, pool them with "
                    "inverse-variance weights, and derive the WD exponent e_wd + p/b that keeps it width-invariant; "
                    "write OUT/recipe.yaml (usable as scaling.recipe), OUT/calibration.json and OUT/calibration.png.",
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
    p.add_argument("--weights", choices=defaults.CALIBRATE_WEIGHTS, default=None,
                   help="fit sigma_max of the stored V (default; what the noise/WD equilibrium pins) or of the "
                        "effective diag(r) V diag(c); the gain is always the effective layer's")
    p.add_argument("--premise", choices=defaults.CALIBRATE_PREMISES, default="measured",
                   help="measure sigma_max ~ lr^a wd^-b in 4 extra runs (default) or assume a = b = 1/2")
    p.add_argument("--seeds", type=positive_int, default=1, help="seeds per width (default: 1)")
    add_overrides(p)
    add_execution(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..app.analysis.calibration import resolve_weights
    from ..app.calibrate import plan_calibration, run_calibration
    from ..errors import SweepError

    try:
        weights = resolve_weights(args.metric, args.weights)
    except SweepError as err:
        raise flag_error(ConfigError(f"weights: {err}")) from None
    try:
        plan = plan_calibration(args.config, args.widths or defaults.CALIBRATE_WIDTHS, steps=args.steps,
                                overrides=args.overrides, seeds=args.seeds, premise=args.premise)
    except ConfigError as err:
        raise flag_error(err) if str(err).startswith("widths:") else err from None
    c = plan.config
    print(f"calibrating recipe {c.scaling.recipe} with {c.optim.name} at widths "
          f"{', '.join(map(str, plan.relaxations))}: {c.train.steps} steps at lr {c.optim.lr:g}, wd "
          f"{c.optim.weight_decay:g} (base width {c.scaling.base_width}); relaxation times covered: "
          + ", ".join(f"{v:.1f}" for v in plan.relaxations.values()))
    if plan.premise is not None:
        g = plan.premise.grid
        lrs, wds = next(v for k, v in g.items() if k.endswith("lr")), g["optim.weight_decay"]
        print(f"premise runs at width {g['model.width'][0]}: lr {', '.join(f'{v:g}' for v in lrs)} x wd "
              f"{', '.join(f'{v:g}' for v in wds)} (in {args.out / 'premise'})")
    done = run_calibration(plan, args.out, metric=args.metric, weights=weights, workers=args.workers,
                           threads=args.threads, executor=args.executor, address=args.address,
                           progress=not args.quiet)
    cal = done.calibration
    if done.exit_code != 0 or cal is None:
        return done.exit_code
    print(f"fitted: {cal.metric_label} ({cal.weights} weights)")
    print(calibration_table(cal))
    for warning in cal.warnings:
        log.warning(warning)
    pre, p = cal.premise.pooled, cal.pooled.fit
    how = f"measured at width {cal.premise.width}" if cal.premise.measured else "assumed"
    print(f"premise ({how}): {cal.metric} ~ lr^a wd^-b with a = {pre.a:.3f} ± {pre.a_se:.3f}, "
          f"b = {pre.b:.3f} ± {pre.b_se:.3f}; width exponent p = {p.exponent:+.3f} ± {p.exponent_se:.3f} (pooled)")
    print(f"{cal.exponent_field} = e_wd + p/b = {cal.derived_exponent:g} ± {cal.derived_exponent_se:.3f} "
          f"(runs used {cal.wd_exponent:g}; alpha {cal.alpha:.3f}; {cal.weights} weights)")
    for label, path in done.paths.items():
        print(f"  {label}: {path}")
    print(f"  use it: widthwise train CONFIG --set scaling.recipe={done.paths['recipe']}")
    return 0


def calibration_table(cal: Any) -> str:
    """Per layer type and pooled: the width exponent p ± se, its fit quality and pooling weight, the premise's a and
    b, alpha and the derived exponent ± se."""
    def wd(layer: Any) -> str:
        return "n/a (b <= 0)" if layer.wd_exponent is None else f"{layer.wd_exponent:.3f} ± {layer.wd_exponent_se:.3f}"

    rows = [[name, f"{layer.fit.exponent:+.3f} ± {layer.fit.exponent_se:.3f}", f"{layer.fit.r2:.3f}",
             f"{layer.weight:.2f}", f"{layer.a:.3f}", f"{layer.b:.3f}", f"{layer.alpha:.3f}", wd(layer)]
            for name, layer in [*cal.layers.items(), ("pooled", cal.pooled)]]
    return format_table(rows, header=["layer", f"p ({cal.metric} ~ d^p)", "r2", "weight", "a", "b", "alpha",
                                      cal.exponent_field], indent="  ")
