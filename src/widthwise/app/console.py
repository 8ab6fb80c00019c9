"""Where the library's log records go when widthwise runs as a program: one line each on stderr.

Library code logs to the ``widthwise`` logger (``logging.getLogger(__name__)`` in each module) and never
prints; a program (the CLI, a sweep worker) calls :func:`setup_logging` once. Records read
``widthwise: MESSAGE``, warnings ``widthwise: warning: MESSAGE``.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["setup_logging"]

_HANDLER_NAME = "widthwise-console"


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        return f"widthwise: {level}{record.getMessage()}"


def setup_logging(level: int = logging.INFO) -> logging.Logger:
    """Send the ``widthwise`` logger's records to the current ``sys.stderr`` (once; calling again updates it)."""
    logger = logging.getLogger("widthwise")
    handler = next((h for h in logger.handlers if h.get_name() == _HANDLER_NAME), None)
    if handler is None:
        handler = logging.StreamHandler()
        handler.set_name(_HANDLER_NAME)
        handler.setFormatter(_Format())
        logger.addHandler(handler)
    handler.stream = sys.stderr  # pytest's capsys and tqdm swap sys.stderr: follow it (setStream would flush the old)
    logger.setLevel(level)
    logger.propagate = False
    return logger
