"""The errors widthwise raises for bad input, and the exit codes of its commands.

Every error is a :class:`WidthwiseError` whose message is one line naming what is wrong (a config field, a
file, an argument); the command line prints it and exits with :data:`EXIT_BAD_INPUT`. They subclass
``ValueError``, so code that caught ``ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_BUSY",
    "EXIT_DIVERGED",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ExportError",
    "ForwardStopped",
    "RunError",
    "SweepError",
    "WidthwiseError",
]

EXIT_OK = 0
#: A run or sweep point crashed (not bad input); also what Python exits with on an uncaught exception.
EXIT_FAILED = 1
#: Bad input: usage, config, data, checkpoint, run directory, sweep file or results database.
EXIT_BAD_INPUT = 2
#: Training diverged (loss not finite or past ``train.divergence_factor``); recorded as such.
EXIT_DIVERGED = 3
#: ``EX_TEMPFAIL``: another process holds the run directory.
EXIT_BUSY = 75
#: Stopped by SIGINT/SIGTERM after writing a checkpoint (``128 + SIGINT``).
EXIT_INTERRUPTED = 130


class ForwardStopped(BaseException):
    """Not an error: a hook's signal that a forward pass has given all it was run for (the sublayer gains stop
    before the head), caught by whoever registered the hook. A ``BaseException``, so that a model's own
    ``except Exception`` does not swallow it."""


class WidthwiseError(ValueError):
    """Bad input to widthwise; the message is one line naming the field, file or argument."""


class ConfigError(WidthwiseError):
    """A bad configuration; the message names the field (``model.heads: ...``)."""


class DataError(WidthwiseError):
    """Training text that cannot be read or tokenized; the message names the file."""


class CheckpointError(WidthwiseError):
    """A checkpoint that cannot be read or does not fit the run."""


class RunError(WidthwiseError):
    """A run directory that cannot be used (exists already, missing, corrupt)."""


class ExportError(WidthwiseError):
    """A model that cannot be written (or loaded) as a plain Hugging Face model; the message says why."""


class SweepError(WidthwiseError):
    """A bad sweep file, sweep directory or results database."""
