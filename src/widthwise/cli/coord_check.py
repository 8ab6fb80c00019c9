"""``widthwise coord-check``: activation size against width for each recipe (microsoft/mup's coordinate check)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..app import defaults
from ..errors import ConfigError, RunError
from .args import Subparsers, add_overrides, builtin_configs, flag_error, int_list, name_list, positive_int


def add_parser(sub: Subparsers) -> None:
    config, lr = defaults.COORD_CHECK_CONFIG, defaults.COORD_CHECK_LR
    widths, recipes, steps = defaults.COORD_CHECK_WIDTHS, defaults.COORD_CHECK_RECIPES, defaults.COORD_CHECK_STEPS
    p = sub.add_parser(
        "coord-check", help="coordinate check: activation size against width for each recipe",
        description="Train each recipe a few steps at several widths and fit how activation size grows with width "
                    "(microsoft/mup's coordinate check), plus top singular values and sublayer gains.",
        epilog=f"default: built-in config {config} at optim.lr={lr:g}; {builtin_configs()}",
    )
    p.add_argument("config", nargs="?", help=f"YAML config file or built-in name (default: {config} at lr {lr:g}); "
                                             "its head dim and depth are kept at every width")
    p.add_argument("--out", type=Path, required=True, help="new output directory")
    p.add_argument("--widths", type=int_list, default=list(widths),
                   help=f"comma-separated widths (default: {','.join(map(str, widths))})")
    p.add_argument("--recipes", type=name_list, default=list(recipes),
                   help=f"comma-separated recipes (default: {','.join(recipes)})")
    p.add_argument("--steps", type=positive_int, default=steps, help=f"training steps per model (default: {steps})")
    p.add_argument("--seeds", type=positive_int, default=1, help="number of seeds, from train.seed (default: 1)")
    add_overrides(p, "override a config field (repeatable), e.g. optim.lr=1e-2")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..app import coord_check as cc
    from ..app.config import load_config

    out: Path = args.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunError(f"--out {out}: already exists and is not empty; choose another --out")
    cc.check_overrides(args.overrides)
    config = load_config(args.config, args.overrides) if args.config else cc.default_config(args.overrides)
    seeds = [config.train.seed + i for i in range(args.seeds)]
    try:
        cc.check_grid(config, args.widths, args.recipes, args.steps, seeds)
    except ConfigError as err:
        raise flag_error(err) from None
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunError(f"--out {out}: cannot create it ({err.strerror or err})") from None
    check = cc.coord_check(config, args.widths, recipes=args.recipes, steps=args.steps, seeds=seeds,
                           progress=not args.quiet)
    check.save(out / "coord_check.json")
    check.plot(out / "coord_check.png")
    print(f"coordinate check: {len(check.recipes)} recipes x widths {','.join(map(str, check.widths))} x "
          f"{len(seeds)} seed(s), {check.steps} steps at lr {check.lr:g}, {check.wall_s:.0f} s")
    print("slope of log(mean |x|) against log(width) at the last step (0 = flat):")
    print(check.table())
    print(f"  results: {out / 'coord_check.json'}\n  plot: {out / 'coord_check.png'}")
    return 0
