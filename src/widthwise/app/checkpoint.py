"""Atomic, resumable checkpoints: safetensors weights plus optimizer, scheduler, sampler and RNG state.

Layout: ``RUN_DIR/checkpoints/step_000100/{model.safetensors, optimizer.pt, state.json}`` and a ``latest``
file naming the newest complete one. A checkpoint is written into a hidden temporary folder, fsynced and
renamed into place; ``latest`` is replaced atomically after that. A kill at any moment leaves the previous
checkpoint intact and ``latest`` pointing at a complete folder. Everything loads with ``weights_only=True``.

Pruning (``keep``) and the cleanup of killed writes delete only folders this module writes: named ``step_N`` (or
its temporary ``.step_N.*``), not a link, holding nothing but checkpoint parts (and a part writer's temporary file).
Anything else under ``checkpoints/`` (a folder a user or another tool put there) is left alone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from .atomic import atomic_write_text, fsync_dir

CHECKPOINT_VERSION = 1
LATEST = "latest"
#: The parts of a checkpoint stored as tensors (safetensors, torch.save); the rest is ``state.json``.
TENSOR_PARTS = ("model", "optimizer", "scheduler", "rng")
#: The files of a checkpoint folder, and the names of the folders (complete, temporary) that :func:`save_checkpoint`
#: writes: only these are ever deleted.
FILES = frozenset({"model.safetensors", "optimizer.pt", "state.json"})
_FOLDER = re.compile(r"step_(\d{8,})")
_TEMP = re.compile(r"\.step_\d{8,}\..+")
_LATEST_TEMP = re.compile(rf"\.{LATEST}\..+\.tmp")  # atomic_write_text's temporary file of `latest`
#: The temporary file a part's writer makes beside it: safetensors (0.6 and later) writes ``model.safetensors`` through
#: a ``.tmpXXXXXX`` file in the same folder and renames it, so a write killed there leaves one in the folder.
_PART_TEMP = re.compile(r"\.tmp[A-Za-z0-9]{6}")


@dataclass
class Checkpoint:
    """What a run needs to continue exactly."""

    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]
    state: dict[str, Any]  # JSON: sampler state, tokens, world size, data fingerprint, ...

    @classmethod
    def of(cls, session_state: dict[str, Any], **extra: Any) -> Checkpoint:
        """A checkpoint of a :meth:`Session.state_dict() <widthwise.app.session.Session.state_dict>` and ``extra``
        JSON values (the trainer's own bookkeeping)."""
        rest = {k: v for k, v in session_state.items() if k not in (*TENSOR_PARTS, "step")}
        return cls(session_state["step"], *(session_state[k] for k in TENSOR_PARTS), state={**rest, **extra})

    def session_state(self) -> dict[str, Any]:
        """The state for :meth:`Session.load_state_dict`, with the extra values :meth:`of` stored beside it."""
        return {"step": self.step, **{k: getattr(self, k) for k in TENSOR_PARTS}, **self.state}


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def save_checkpoint(directory: Path, ckpt: Checkpoint, keep: int = 2) -> Path:
    """Write ``ckpt`` under ``directory`` atomically, point ``latest`` at it, keep the newest ``keep``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = f"step_{ckpt.step:08d}"
    final = directory / name
    tmp = Path(tempfile.mkdtemp(dir=directory, prefix=f".{name}."))
    try:
        weights = {k: v.detach().contiguous().cpu() for k, v in ckpt.model.items()}
        save_file(weights, str(tmp / "model.safetensors"))
        torch.save({"optimizer": ckpt.optimizer, "scheduler": ckpt.scheduler, "rng": ckpt.rng},
                   tmp / "optimizer.pt")
        state = {"version": CHECKPOINT_VERSION, "step": ckpt.step, **ckpt.state}
        (tmp / "state.json").write_text(json.dumps(state, indent=1), encoding="utf-8")
        for f in tmp.iterdir():
            _fsync_file(f)
        fsync_dir(tmp)
        if final.exists() or final.is_symlink():  # a stale folder of an earlier attempt (never the one `latest` names)
            if not _written_here(final):
                raise CheckpointError(f"{final}: is in the way of the checkpoint of step {ckpt.step} and was not "
                                      "written by widthwise (it holds other files); move it out of checkpoints/")
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(directory)
    except Exception as err:
        reason = _write_failure(err, directory, ckpt)  # asked before the cleanup frees the space
        shutil.rmtree(tmp, ignore_errors=True)
        if reason is None or isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"{final}: cannot write the checkpoint ({reason}); the previous checkpoint is "
                              "intact") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(directory / LATEST, name + "\n")
    _prune(directory, keep, protect=name)
    return final


def _write_failure(err: Exception, directory: Path, ckpt: Checkpoint) -> str | None:
    """What failed a checkpoint write, when it is the filesystem's doing (full, read-only, quota), else ``None``.

    safetensors and torch.save report a full disk as their own errors (``os error 28``; torch's "unexpected pos"),
    so a write that failed with less space free than the checkpoint needs counts as a full disk.
    """
    if isinstance(err, OSError) and err.errno is not None:
        return err.strerror or os.strerror(err.errno)
    text = str(err)
    for errno in (28, 30, 122):  # ENOSPC, EROFS, EDQUOT
        if f"os error {errno}" in text or os.strerror(errno) in text:
            return os.strerror(errno)
    try:
        stat = os.statvfs(directory)
    except OSError:
        return None
    need = sum(t.numel() * t.element_size() for t in ckpt.model.values())
    free = stat.f_bavail * stat.f_frsize
    return f"{os.strerror(28)}: {free:,} bytes free" if free < 3 * need else None


def _written_here(path: Path) -> bool:
    """Whether ``path`` is a folder as :func:`save_checkpoint` writes them: not a link, holding only checkpoint
    parts (or part of them, or a part writer's temporary file: a write or a prune that was killed)."""
    try:
        return not path.is_symlink() and path.is_dir() and all(
            (p.name in FILES or _PART_TEMP.fullmatch(p.name)) and p.is_file() and not p.is_symlink()
            for p in path.iterdir())
    except OSError:
        return False


def _prune(directory: Path, keep: int, protect: str) -> None:
    """Delete all but the newest ``keep`` checkpoints, and the temporary folders and ``latest`` files of killed
    writes (only folders :func:`_written_here`)."""
    done = sorted((int(m[1]), p) for p in directory.iterdir() if (m := _FOLDER.fullmatch(p.name)))
    ours = [p for _, p in done if _written_here(p)]
    for old in ours[:-keep] if keep > 0 else []:
        if old.name != protect:
            shutil.rmtree(old, ignore_errors=True)
    for stale in directory.iterdir():  # what writes that were killed left
        if _TEMP.fullmatch(stale.name) and _written_here(stale):
            shutil.rmtree(stale, ignore_errors=True)
        elif _LATEST_TEMP.fullmatch(stale.name) and stale.is_file() and not stale.is_symlink():
            stale.unlink(missing_ok=True)


def latest_checkpoint(directory: Path) -> Path | None:
    """The folder ``latest`` names, or ``None`` when the run never finished writing a checkpoint."""
    pointer = Path(directory) / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text(encoding="utf-8").strip()
    path = Path(directory) / name
    if not name.startswith("step_") or not path.is_dir():
        raise CheckpointError(f"{pointer}: names {name!r}, which is not a checkpoint folder")
    return path


#: The field of ``state.json`` every checkpoint has, with its JSON type (a session's and the trainer's own fields
#: are theirs to check: ``Session.load_state_dict``, the trainer's progress).
STATE_FIELDS: dict[str, type | tuple[type, ...]] = {"step": int}


def require_fields(state: Any, fields: dict[str, type | tuple[type, ...]], where: str) -> None:
    """A :class:`CheckpointError` naming the first of ``fields`` that ``state`` lacks or holds with another type."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{where}: not a mapping of checkpoint fields")
    for name, kind in fields.items():
        if name not in state:
            raise CheckpointError(f"{where}: the field {name!r} is missing")
        value = state[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise CheckpointError(f"{where}: the field {name!r} is {type(value).__name__}, not "
                                  f"{getattr(kind, '__name__', kind)}")


def load_checkpoint(path: Path) -> Checkpoint:
    """Load a checkpoint folder; any missing or corrupt part is a :class:`CheckpointError` naming the file."""
    path = Path(path)
    state_file = path / "state.json"
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{state_file}: unreadable checkpoint state ({err.__class__.__name__})") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{state_file}: not a widthwise checkpoint of version {CHECKPOINT_VERSION}")
    try:
        model = load_file(str(path / "model.safetensors"))
    except (OSError, SafetensorError, ValueError) as err:
        raise CheckpointError(f"{path / 'model.safetensors'}: unreadable weights ({err})") from None
    try:
        with warnings.catch_warnings():  # a corrupt file can trip torch's pickle-protocol warning first
            warnings.simplefilter("ignore")
            rest = torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
    except Exception as err:  # torch raises many types for corrupt pickles
        name = err.__class__.__name__
        raise CheckpointError(f"{path / 'optimizer.pt'}: unreadable optimizer state ({name})") from None
    if not isinstance(rest, dict) or not {"optimizer", "scheduler", "rng"} <= set(rest):
        raise CheckpointError(f"{path / 'optimizer.pt'}: missing optimizer, scheduler or RNG state")
    require_fields(state, STATE_FIELDS, str(state_file))
    step = state.pop("step")
    state.pop("version")
    return Checkpoint(step, model, rest["optimizer"], rest["scheduler"], rest["rng"], state)
