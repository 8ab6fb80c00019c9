"""``widthwise analyze``: where the LR/WD optimum sits at each width, and whether it transfers."""

from __future__ import annotations

import argparse
from pathlib import Path

from .args import Subparsers


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "analyze", help="where the LR/WD optimum sits at each width, and whether it transfers",
        description="Find the best LR and WD per recipe and width (grid and log-quadratic fit), judge transfer across "
                    "widths, and write SWEEP_DIR/report.md, SWEEP_DIR/optima.json and plots in SWEEP_DIR/plots/.",
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
        t = fam["transfer"]
        print(f"  {fam['label']}: {t['verdict']}: {t['summary']}")
        for width, entry in fam["per_width"].items():
            fit = entry["fit"]
            print(f"    width {width}: best lr {fit['lr']:.3g}, wd {fit['weight_decay']:.3g} "
                  f"(val loss {entry['best']['val_loss']:.4f})")
    print(f"  report: {optima['report']}\n  optima: {Path(args.sweep_dir) / 'optima.json'}")
    return 0
