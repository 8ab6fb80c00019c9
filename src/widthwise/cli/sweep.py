"""``widthwise sweep``: run a sweep file's grid of trainings, resumable."""

from __future__ import annotations

import argparse
from pathlib import Path

from .args import Subparsers, add_execution, positive_int


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "sweep", help="run a grid of trainings (width x LR x WD x recipe ...), resumable",
        description="Run every point of a sweep file's grid as an ordinary run directory under SWEEP_DIR/runs/ and "
                    "record each in SWEEP_DIR/results.db (SQLite). Rerunning the same command resumes the sweep.",
        epilog="sweep file: {base: CONFIG, grid: {section.key: [values]}, set: {section.key: value}, seeds: [..]}",
    )
    p.add_argument("sweep_file", type=Path, metavar="SWEEP.yaml", help="the sweep file")
    p.add_argument("--out", type=Path, required=True, metavar="SWEEP_DIR", help="sweep directory (new or resumed)")
    add_execution(p)
    p.add_argument("--nproc", type=positive_int, default=1,
                   help="processes per run, under torchrun, on either executor (train.parallel ddp unless set; on "
                        "Ray each run reserves threads x N CPUs and, on a cluster with GPUs, N GPUs, on one node)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..app.sweep.driver import run_sweep
    from ..app.sweep.spec import load_sweep

    result = run_sweep(load_sweep(args.sweep_file), args.out, workers=args.workers, threads=args.threads,
                       executor=args.executor, address=args.address, progress=not args.quiet, nproc=args.nproc)
    if result.exit_code == 0:
        print(f"sweep {args.out}: {result.counts['completed']} completed, {result.counts['diverged']} diverged, "
              f"{result.wall_s:.0f} s\n  next: widthwise analyze {args.out}")
    return result.exit_code
