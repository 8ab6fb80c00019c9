"""``widthwise analyze``: where the LR/WD optimum sits at each width, and whether it transfers."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .args import Subparsers

log = logging.getLogger(__name__)


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "analyze", help="where the LR/WD optimum sits at each width, and whether it transfers",
        description="Find the best LR and WD per recipe and width (grid and log-quadratic fit), judge transfer across "
                    "widths (transfers, drifts or inconclusive, from bootstrap intervals on the drift), measure the "
                    "regret at the widest width, and write SWEEP_DIR/report.md, SWEEP_DIR/optima.json and plots in "
                    "SWEEP_DIR/plots/.",
    )
    p.add_argument("sweep_dir", type=Path, metavar="SWEEP_DIR")
    p.add_argument("--no-plots", action="store_true", help="write optima.json and report.md only")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..app.analysis.analyze import analyze

    optima = analyze(args.sweep_dir, plots=not args.no_plots)
    families = optima["families"]
    print(f"analyzed {args.sweep_dir}: {len(families)} famil{'y' if len(families) == 1 else 'ies'}")
    for fam in families:
        print(f"  {fam['label']}: {fam['verdict']}: {fam['summary']}")
        for reason in fam["reasons"]:
            print(f"    - {reason}")
        for width, entry in fam["per_width"].items():
            fit = entry["fit"]
            if fit is None:
                print(f"    width {width}: no completed run")
                continue
            coords = entry["coordinates"] or {}
            papers = (f", hidden lr*wd {coords['lr_times_wd']:.3g}, lr/wd {coords['lr_over_wd']:.3g}"
                      if coords.get("lr_over_wd") is not None else "")
            print(f"    width {width}: best lr {fit['lr']:.3g}, wd {fit['weight_decay']:.3g} "
                  f"(val loss {entry['best']['val_loss']:.4f}{papers})")
        regret = fam["regret"]
        for t in (regret or {}).get("from", []):
            value = f"{t['regret']:+.4f}" if t["regret"] is not None else f"none ({t['status']})"
            spread = f" (seed std {t['seed_std']:.2g})" if t["seed_std"] is not None else ""
            print(f"    regret at width {regret['width']} of width {t['width']}'s optimum: {value}{spread}")
        for warning in fam["warnings"]:
            log.warning(warning)
    print(f"  report: {optima['report']}\n  optima: {Path(args.sweep_dir) / 'optima.json'}")
    return 0
