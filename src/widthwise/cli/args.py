"""What the commands share: the parser class, argument types and common options. Imports nothing heavy."""

from __future__ import annotations

import argparse
from typing import NoReturn

from ..app import configs
from ..errors import EXIT_BAD_INPUT, ConfigError

Subparsers = argparse._SubParsersAction


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    """``"3"`` -> 3; anything that is not an integer >= 1 is a usage error."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def int_list(text: str) -> list[int]:
    """``"32,64"`` -> ``[32, 64]``: positive integers (every list the commands take is of widths)."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def name_list(text: str) -> list[str]:
    """``"sp, mup"`` -> ``["sp", "mup"]``."""
    return [part.strip() for part in text.split(",") if part.strip()]


def builtin_configs() -> str:
    """``built-in configs: demo, tiny``, for help epilogs (read without importing torch)."""
    return f"built-in configs: {', '.join(configs.names())}"


def add_overrides(p: argparse.ArgumentParser, what: str = "override a config field (repeatable)") -> None:
    """``--set SECTION.KEY=VALUE`` (repeatable) into ``args.overrides``."""
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="overrides", help=what)


def add_execution(p: argparse.ArgumentParser) -> None:
    """Options shared by the commands that run many trainings: where and how wide."""
    p.add_argument("--workers", type=positive_int, help="runs at a time (default: cores / threads)")
    p.add_argument("--threads", type=positive_int, help="threads per run (default: 2 with 4+ cores, else 1)")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local worker processes, or Ray (default: local)")
    p.add_argument("--address", help="Ray cluster address for --executor ray (default: start a local instance)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def flag_error(err: ConfigError) -> ConfigError:
    """An application error that starts with an argument's name (``widths: ...``) as the flag (``--widths: ...``)."""
    return ConfigError(f"--{err}")
