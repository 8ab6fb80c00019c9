"""The ``widthwise`` command line. Exit codes: 0 success, 2 bad input (one line on stderr), 3 diverged."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from .data import DataError
from .train.checkpoint import CheckpointError
from .train.config import ConfigError, builtin_names, load_config
from .train.trainer import EXIT_BAD_INPUT, RunError

USER_ERRORS = (ConfigError, DataError, CheckpointError, RunError)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="widthwise", description="Width-robust LLM pretraining.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    train = sub.add_parser(
        "train", help="train the reference LLaMA model",
        description="Train the reference LLaMA model into a run directory, or resume one.",
        epilog=f"built-in configs: {', '.join(builtin_names())}",
    )
    train.add_argument("config", nargs="?", help="YAML config file or built-in name (default: all defaults)")
    train.add_argument("--out", type=Path, help="new run directory")
    train.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR")
    train.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="overrides",
                       help="override a config field (repeatable)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _train(args: argparse.Namespace) -> int:
    from .train import trainer

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
    _report(result)
    return result.exit_code


def _report(result) -> None:
    s, run = result.summary, result.run_dir
    val = f"{s['val_loss']:.4f}" if isinstance(s.get("val_loss"), float) else "n/a"
    print(f"{s['status']}: {s['steps']} steps, {s['tokens']:,} tokens, val loss {val}, "
          f"{s.get('tokens_per_s') or 0:,.0f} tokens/s, {s['wall_s']:.0f} s")
    print(f"  run directory: {run}")
    for label, path in (("loss curve", run / "plots" / "loss.png"), ("plots", run / "plots"),
                        ("metrics", run / "metrics.jsonl"), ("samples", run / "samples.txt")):
        if path.exists():
            print(f"  {label}: {path}")
    sample = run / "samples.txt"
    if sample.exists() and s["status"] == "completed":
        print("\n--- sample from the trained model ---")
        print(sample.read_text(encoding="utf-8").rstrip())


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "train":
            return _train(args)
    except USER_ERRORS as err:
        message = " ".join(str(err).split())  # one line, whatever the message
        print(f"widthwise: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
