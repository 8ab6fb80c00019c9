"""``widthwise train``: train the reference LLaMA model into a run directory, or resume one."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ..errors import RunError
from .args import Subparsers, add_overrides, builtin_configs


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("train", help="train the reference LLaMA model",
                       description="Train the reference LLaMA model into a run directory, or resume one.",
                       epilog=builtin_configs())
    p.add_argument("config", nargs="?", help="YAML config file or built-in name (default: all defaults)")
    p.add_argument("--out", type=Path, help="new run directory")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR")
    add_overrides(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..app import trainer
    from ..app.config import load_config

    overrides = list(args.overrides) + (["train.progress=false"] if args.quiet else [])
    if args.resume is not None:
        if args.config is not None or args.out is not None:
            raise RunError("--resume takes the run directory only: drop CONFIG and --out")
        result = trainer.resume(args.resume, overrides)
    else:
        if args.out is None:
            raise RunError("--out RUN_DIR is required (or --resume RUN_DIR)")
        config = load_config(args.config, overrides)
        result = trainer.start(config, args.out)
    if int(os.environ.get("RANK", 0)) == 0:  # under torchrun, rank 0 reports
        report(result)
    return result.exit_code


def report(result: Any) -> None:
    """Print a finished run: its summary line, its files and, when it completed, the model's sample."""
    s, run = result.summary, result.run
    val = f"{s['val_loss']:.4f}" if isinstance(s.get("val_loss"), float) else "n/a"
    print(f"{s['status']}: {s['steps']} steps, {s['tokens']:,} tokens, val loss {val}, "
          f"{s.get('tokens_per_s') or 0:,.0f} tokens/s, {s['wall_s']:.0f} s")
    print(f"  run directory: {run.path}")
    for label, path in run.outputs().items():
        print(f"  {label}: {path}")
    sample = run.samples()
    if sample is not None and s["status"] == "completed":
        print("\n--- sample from the trained model ---")
        print(sample)
