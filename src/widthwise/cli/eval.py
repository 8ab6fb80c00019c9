"""``widthwise eval``: lm-eval on a run or an HF folder (shipped offline tasks, or lm-eval's own); eval.json."""

from __future__ import annotations

import argparse
from pathlib import Path

from .args import Subparsers, name_list, positive_int


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "eval", help="score a run or an HF folder with lm-eval (shipped offline Shakespeare tasks) -> eval.json",
        description="Run lm-eval's harness in process on the model of RUN_DIR (folded as `widthwise export` writes "
                    "it) or of HF_DIR, and write eval.json (per task: its metric, stderr and n) into the run "
                    "directory, or beside HF_DIR as HF_DIR.eval.json. Shipped offline tasks: shakespeare_cloze, "
                    "shakespeare_next_line (held-out plays of the bundled corpus); other lm-eval task names work "
                    "where their data is available locally. Needs the `eval` extra.",
    )
    p.add_argument("path", type=Path, nargs="?", metavar="RUN_DIR|HF_DIR", help="a run directory or an HF folder")
    p.add_argument("--tasks", type=name_list, metavar="T1,T2", help="comma-separated task names")
    p.add_argument("--limit", type=positive_int, help="score only the first N items of each task")
    p.add_argument("--batch-size", type=positive_int, default=16, help="sequences per forward (default: 16)")
    p.add_argument("--step", type=int, help="a run's checkpoint step (default: the latest)")
    p.add_argument("--list", action="store_true", help="list the shipped tasks and exit")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError

    if args.list:
        from ..app.evaluation import list_tasks

        for name, what in list_tasks().items():
            print(f"{name:24s} {what}")
        return 0
    if args.path is None or not args.tasks:
        raise ConfigError("eval: give RUN_DIR|HF_DIR and --tasks T1,T2 (or --list)")
    from ..app.evaluation import eval_file, evaluate

    result = evaluate(args.path, args.tasks, limit=args.limit, batch_size=args.batch_size, step=args.step)
    for name, r in result["tasks"].items():
        value = "-" if r["value"] is None else f"{r['value']:.4g}"
        err = "" if r["stderr"] is None else f" +- {r['stderr']:.2g}"
        print(f"{name:24s} {r['metric']} {value}{err}  (n={r['n']})")
    print(f"  results: {eval_file(args.path)}")
    return 0
