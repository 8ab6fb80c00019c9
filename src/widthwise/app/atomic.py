"""Crash-safe file writes: a reader (or a resumed run) sees the old content or the new, never a part; and the
file locks that keep two processes from writing one thing (:func:`file_lock`)."""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@contextlib.contextmanager
def file_lock(path: Path, wait: bool = False) -> Iterator[bool]:
    """An exclusive ``flock`` on the file ``path`` (created) for the block; yields whether it was got.

    ``wait=False`` does not block: a lock another process holds yields ``False``. The kernel releases the lock when
    the process dies, however it dies (SIGKILL included), so a stale lock file never blocks anyone. An ``OSError``
    opening the file (a read-only folder, a path under a regular file) propagates. Locks are per open file: a second
    ``file_lock`` of one path in the same process does not get it either.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (where the filesystem allows syncing a directory)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


#: The temporary file of :func:`atomic_write_bytes` (``mkstemp``: ``.NAME.`` then 8 random characters, ``.tmp``).
_TEMP = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def temp_of(path: Path) -> str | None:
    """The name of the file whose temporary file of :func:`atomic_write_bytes` ``path`` is (a killed write leaves
    one), else ``None``."""
    path = Path(path)
    if not (_TEMP.fullmatch(path.name) and path.is_file() and not path.is_symlink()):
        return None
    return path.name[1:].rsplit(".", 2)[0]


def remove_stale_temps(folder: Path, of: Callable[[str], bool]) -> list[Path]:
    """Delete the temporary files that killed :func:`atomic_write_bytes` calls left in ``folder`` (not below it)
    for the files whose names ``of`` accepts; the removed paths. Only for a folder no other process is writing (a
    run directory under its lock)."""
    removed = []
    with contextlib.suppress(OSError):
        for path in Path(folder).iterdir():
            name = temp_of(path)
            if name is not None and of(name):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a synced temporary file in the same folder and ``os.replace``."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_savefig(fig: Figure, path: Path, **kwargs: Any) -> Path:
    """Save a matplotlib figure to ``path`` atomically (``kwargs`` go to ``savefig``, e.g. ``dpi``).

    The figure renders by the file type (Agg for PNG) whatever backend is active, and pyplot is not involved.
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format=Path(path).suffix.lstrip(".") or "png", **kwargs)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a synced temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide results from the rest of a team sharing the directory
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
