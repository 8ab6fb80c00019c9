"""The ``widthwise`` command line. Exit codes: 0 success, 2 bad input (one line on stderr), 3 diverged.

One module per command, each with ``add_parser(sub)`` and ``run(args) -> int``; the modules import the
application (and so torch) only inside ``run``, so building the parser and ``--help`` stay fast.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from ..app.console import setup_logging
from ..errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, WidthwiseError
from .args import Parser

#: ``OSError`` numbers of a filesystem that is full, over quota, read-only or at the file size limit: bad input.
_FILESYSTEM_FULL_OR_READ_ONLY = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}

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
    """Run a command. A :class:`WidthwiseError`, or an ``OSError`` on a named file (no space, read-only, not a
    directory), is one line on stderr and exit code 2; any other exception is one line with the file its full
    traceback was written to, and exit code 1. Never a bare traceback."""
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        return args.run(args)
    except WidthwiseError as err:
        return _fail(str(err), EXIT_BAD_INPUT)
    except OSError as err:
        if err.filename is None and err.errno in _FILESYSTEM_FULL_OR_READ_ONLY:  # a write to an open file
            run = getattr(err, "widthwise_log", None)
            return _fail(f"{Path(run).parent if run else 'writing'}: {err.strerror}", EXIT_BAD_INPUT)
        if err.filename is None:
            return _fail(f"internal error: {_crash(err)}", EXIT_FAILED)
        where = err.filename if err.filename2 is None else f"{err.filename} -> {err.filename2}"
        return _fail(f"{where}: {err.strerror or err}", EXIT_BAD_INPUT)
    except KeyboardInterrupt:  # Ctrl-C outside a training loop (which checkpoints and exits 130 itself)
        return _fail("interrupted", EXIT_INTERRUPTED)
    except SystemExit:
        raise
    except BaseException as err:  # a bug or a resource limit: one line, the traceback in a file
        return _fail(f"internal error: {_crash(err)}", EXIT_FAILED)


def _fail(message: str, code: int) -> int:
    # One line, whatever the message, in one write: the ranks of a torchrun job share stderr, and print's two writes
    # (the text, then the newline) let their lines run into each other.
    sys.stderr.write(f"widthwise: error: {' '.join(message.split())}\n")
    sys.stderr.flush()
    return code


def _crash(err: BaseException) -> str:
    """``Type: message (traceback in FILE)``: the traceback appended to the run's ``crash.log`` where the exception
    left a run that was training (:meth:`~widthwise.app.rundir.RunDir.hold` tags it ``widthwise_log``), else
    written under the cache's ``crashes/`` (else the temp folder)."""
    import time
    import traceback

    from ..app.defaults import default_cache_dir

    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    text = f"--- {stamp}, pid {os.getpid()}: {' '.join(sys.argv)}\n{''.join(traceback.format_exception(err))}"
    summary = f"{type(err).__name__}: {str(err)[:300]}"
    name = f"widthwise-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    run_log = getattr(err, "widthwise_log", None)
    targets = [Path(run_log)] if run_log is not None else []
    for path in (*targets, default_cache_dir() / "crashes" / name, Path(tempfile.gettempdir()) / name):
        try:
            if path not in targets:  # the run's own folder is never made again
                path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as log:
                log.write(text)
            return f"{summary} (traceback in {path})"
        except OSError:
            continue
    return f"{summary} (traceback not written: no writable folder)"


if __name__ == "__main__":
    sys.exit(main())
