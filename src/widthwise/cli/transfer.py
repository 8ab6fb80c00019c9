"""``widthwise transfer``: write a train config for a target width from an analyzed sweep's optimum."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .args import Subparsers, positive_int

log = logging.getLogger(__name__)


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "transfer", help="write a train config for a target width from a sweep's optimum",
        description="Take the proxy optimum of an analyzed sweep (base-width LR/WD: the recipe scales them) and write "
                    "a train config at --width; print the plan with the absolute per-group LR and WD there.",
    )
    p.add_argument("sweep_dir", type=Path, metavar="SWEEP_DIR")
    p.add_argument("--width", type=positive_int, required=True, help="target model width")
    p.add_argument("--out", type=Path, required=True, metavar="CONFIG.yaml", help="config file to write")
    p.add_argument("--recipe", help="pick the family of this recipe")
    p.add_argument("--optimizer", help="pick the family of this optimizer")
    p.add_argument("--multipliers", help="pick the family of this multiplier kind")
    p.add_argument("--family", help="pick a family by its full label (as `widthwise analyze` prints it)")
    p.add_argument("--from-width", type=positive_int, help="proxy width to take the optimum from "
                                                           "(default: the widest swept)")
    p.add_argument("--force", action="store_true", help="overwrite CONFIG.yaml")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..app.transfer import transfer_config, write_transfer

    t = transfer_config(args.sweep_dir, args.width, recipe=args.recipe, optimizer=args.optimizer,
                        multipliers=args.multipliers, from_width=args.from_width, family=args.family)
    write_transfer(t, args.out, force=args.force)
    for warning in t.warnings:
        log.warning(warning)
    print(f"{t.family}: optimum at width {t.from_width}: base lr {t.lr:.4g}, base wd {t.weight_decay:.4g} "
          f"({t.verdict})")
    for line in t.regret_lines():
        print(f"  {line}")
    print(f"plan at width {args.width}:")
    print(t.plan_table)
    print(f"  config: {args.out}\n  train it: widthwise train {args.out} --out RUN_DIR")
    return 0
