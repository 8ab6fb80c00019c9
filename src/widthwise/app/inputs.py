"""Reading the user's files with bounds: regular files only, a size cap, UTF-8, and YAML of bounded depth and
alias expansion, so that a FIFO, a directory, a huge file or an alias bomb is one clear error, never a hang.

Every function raises the :class:`~widthwise.errors.WidthwiseError` subclass it is given, with a one-line
message that starts with ``where`` (the file, or the field that named it).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, WidthwiseError

__all__ = ["MAX_FILE_BYTES", "MAX_YAML_DEPTH", "MAX_YAML_NODES", "check_regular_file", "load_yaml", "read_text_file"]

#: Largest config, recipe or sweep file read (bytes): far above any real one, far below a memory problem.
MAX_FILE_BYTES = 4 * 1024 * 1024
#: Deepest YAML nesting accepted (a config is four levels deep; a recipe or sweep file about as much).
MAX_YAML_DEPTH = 64
#: Most values a YAML document may stand for once its aliases are expanded (an alias bomb stands for billions).
MAX_YAML_NODES = 200_000


def check_regular_file(path: str | Path, where: str, error: type[WidthwiseError] = ConfigError) -> os.stat_result:
    """``path``'s stat when it is a regular file; else ``error`` saying what it is (missing, a directory, a FIFO)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"{where}: does not exist") from None
    except OSError as err:
        raise error(f"{where}: cannot read it ({err.strerror or err})") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{where}: is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{where}: not a regular file (a FIFO, socket or device); give a file")
    return st


def read_text_file(path: str | Path, where: str, error: type[WidthwiseError] = ConfigError,
                   max_bytes: int = MAX_FILE_BYTES) -> str:
    """The UTF-8 text of the regular file ``path``, at most ``max_bytes`` long (``error`` otherwise)."""
    st = check_regular_file(path, where, error)
    if st.st_size > max_bytes:
        raise error(f"{where}: {st.st_size:,} bytes, larger than the {max_bytes:,} accepted")
    try:
        # O_NONBLOCK: a file swapped for a FIFO after the stat still cannot block the open
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError as err:
        raise error(f"{where}: cannot read it ({err.strerror or err})") from None
    if len(raw) > max_bytes:
        raise error(f"{where}: larger than the {max_bytes:,} bytes accepted")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{where}: not UTF-8 text (invalid byte at offset {err.start})") from None


class _Bounded(yaml.YAMLError):
    """A document past the depth or expansion bounds."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses nesting deeper than :data:`MAX_YAML_DEPTH` while composing."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise _Bounded(f"nested deeper than {MAX_YAML_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _expanded_size(root: yaml.Node) -> int:
    """How many values ``root`` stands for with every alias expanded (shared nodes counted each time they occur)."""
    sizes: dict[int, int] = {}
    pending: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in pending:
            raise _Bounded("a recursive alias (a value that contains itself)")
        pending.add(key)
        if isinstance(node, yaml.SequenceNode):
            n = 1 + sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            n = 1 + sum(size(k) + size(v) for k, v in node.value)
        else:
            n = 1
        pending.discard(key)
        sizes[key] = n
        return n

    return size(root)


def load_yaml(text: str, where: str, error: type[WidthwiseError] = ConfigError, *, raw_if_invalid: bool = False) -> Any:
    """``yaml.safe_load(text)`` within bounds: :data:`MAX_FILE_BYTES`, :data:`MAX_YAML_DEPTH` and
    :data:`MAX_YAML_NODES` values after alias expansion; ``error`` naming ``where`` and the line otherwise.
    ``raw_if_invalid``: text that is not YAML is returned as it is (a ``--set`` value); the bounds still hold."""
    if len(text) > MAX_FILE_BYTES:
        raise error(f"{where}: {len(text):,} characters of YAML, more than the {MAX_FILE_BYTES:,} accepted")
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node) > MAX_YAML_NODES:
            raise error(f"{where}: its YAML aliases expand to more than {MAX_YAML_NODES:,} values; refused")
        return loader.construct_document(node)
    except _Bounded as err:
        raise error(f"{where}: YAML {err}; refused") from None
    except yaml.YAMLError as err:
        if raw_if_invalid:
            return text
        mark = getattr(err, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise error(f"{where}: not valid YAML{line} ({getattr(err, 'problem', None) or err})") from None
    except RecursionError:
        raise error(f"{where}: YAML nested too deeply; refused") from None
    finally:
        loader.dispose()
