"""The ``widthwise`` command line. Exit codes: 0 success, 2 bad input (one line on stderr), 3 diverged.

One module per command, each with ``add_parser(sub)`` and ``run(args) -> int``; the modules import the
application (and so torch) only inside ``run``, so building the parser and ``--help`` stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .. import __version__
from ..app.console import setup_logging
from ..errors import EXIT_BAD_INPUT, WidthwiseError
from .args import Parser

#: The command modules, in the order ``--help`` lists them.
COMMANDS = ("train", "coord_check", "diagnose", "sweep", "analyze", "transfer", "calibrate", "export", "eval",
            "bench", "config")


def build_parser() -> argparse.ArgumentParser:
    """The ``widthwise`` parser with every command's subparser (imports no torch)."""
    parser = Parser(prog="widthwise", description="Width-robust LLM pretraining.")
    parser.add_argument("--version", action="version", version=f"widthwise {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; a :class:`WidthwiseError` is one line on stderr and exit code 2."""
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        return args.run(args)
    except WidthwiseError as err:
        message = " ".join(str(err).split())  # one line, whatever the message
        print(f"widthwise: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
