"""The run directory, the contract between ``train``, ``sweep``, ``diagnose``, ``transfer`` and ``analyze``.

:class:`RunDir` owns every path of it and every read and write of its files; nothing else builds those paths:

- ``config.yaml``: the user's config exactly as given (``null`` stays ``null``), then ``resolved:`` (every value
  the run resolved: ``model.vocab_size``, forward multipliers, ``scaling.base_width``, runtime, data) and ``plan:``;
- ``plan.txt``, ``metrics.jsonl``, ``diagnostics.jsonl``, ``summary.json``, ``samples.txt``, ``diagnostics.json``;
- ``checkpoints/`` (:mod:`widthwise.app.checkpoint`), ``plots/``, ``tensorboard/``;
- ``.widthwise.lock``, the lock a training process holds (:meth:`RunDir.hold`), and ``crash.log``, the traceback of
  an unexpected exception while it trained.

A run directory is never created inside another one (:meth:`RunDir.create`): that run's checkpoint pruning or a
cleanup would take the new one with it.

Writes are atomic (:mod:`widthwise.app.atomic`). A missing or corrupt file is a :class:`RunError` naming the
directory (as ``what``, e.g. ``--resume``) and the file. Directories of the earlier layout, whose user fields held
the resolved values, still read: :attr:`RunDir.legacy` tells them apart.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..errors import CheckpointError, ConfigError, RunError
from .atomic import atomic_write_text, file_lock, remove_stale_temps, temp_of
from .checkpoint import Checkpoint, latest_checkpoint, load_checkpoint, save_checkpoint
from .config import Config, from_dict
from .inputs import load_yaml
from .metrics import MetricsLog, json_safe, read_metrics

if TYPE_CHECKING:
    from ..planning import Plan

__all__ = ["LOCK_FILE", "RESOLVED_FIELDS", "RunDir"]

#: The lock file inside a run directory that its training process holds (:meth:`RunDir.hold`).
LOCK_FILE = ".widthwise.lock"
#: The files of a run directory written atomically (whose temporary files a killed write can leave).
RUN_FILES = frozenset({"config.yaml", "plan.txt", "summary.json", "samples.txt", "diagnostics.json"})

#: User fields that a run resolves when they are ``null``, stored under ``resolved:`` (section -> keys).
RESOLVED_FIELDS = {"model": ("vocab_size", "embedding_multiplier", "head_multiplier", "attention_scale"),
                   "scaling": ("base_width",)}


class RunDir:
    """One run directory: its paths, and the reads and writes of its files.

    ``RunDir(path)`` is a handle that checks nothing; :meth:`create` and :meth:`open` check the directory first.
    """

    def __init__(self, path: Path, what: str = "RUN_DIR") -> None:
        self.path, self.what = Path(path), what
        self._stored: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- opening ----------------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path, what: str = "--out") -> RunDir:
        """A new run at ``path``, made on the first write; :class:`RunError` if it holds anything (but what a start
        killed before writing its ``config.yaml`` leaves) or lies inside another run directory."""
        path = Path(path)
        if path.exists() and (not path.is_dir() or not all(map(cls._left_by_a_start, path.iterdir()))):
            raise RunError(f"{what} {path}: already exists and is not empty; use --resume {path} or another --out")
        for parent in path.absolute().resolve().parents:
            if cls.is_run(parent):
                raise RunError(f"{what} {path}: inside the run directory {parent}; a run directory cannot hold "
                               "another run (its checkpoint pruning could delete it): choose a folder outside it")
        return cls(path, what)

    @staticmethod
    def _left_by_a_start(path: Path) -> bool:
        """What a start killed before its ``config.yaml`` leaves: the lock, an empty ``checkpoints/``, a temp file."""
        if path.name == "checkpoints" and path.is_dir() and not path.is_symlink():
            return not any(path.iterdir())
        return path.name == LOCK_FILE or temp_of(path) in RUN_FILES

    @staticmethod
    def is_run(path: Path) -> bool:
        """Whether ``path`` is a run directory: a ``config.yaml`` beside ``checkpoints/``, or a training's lock."""
        path = Path(path)
        return ((path / "config.yaml").is_file() and (path / "checkpoints").is_dir()) or (path / LOCK_FILE).is_file()

    @contextlib.contextmanager
    def hold(self, new: bool = False) -> Iterator[RunDir]:
        """Hold the run's lock (``.widthwise.lock``, made with the directory) for the block: one process trains a
        run at a time. :class:`RunError` if another process holds it, or the directory cannot be written.

        The lock is an ``flock`` (:func:`~widthwise.app.atomic.file_lock`), which the kernel drops when its process
        dies: a SIGKILLed run never blocks its resume. Once it is held, the temporary files of atomic writes that a
        kill interrupted (``.config.yaml.*.tmp``, in the run's folder and its plot folders) are removed. An
        unexpected exception leaving the block carries the run's :attr:`crash_file` as ``widthwise_log``, where the
        command line writes its traceback. A ``new`` run whose folder the block made and that fails before writing
        its ``config.yaml`` (a config the session refuses) takes its folder away again.
        """
        made = new and not self.path.exists()
        with contextlib.ExitStack() as stack:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                locked = stack.enter_context(file_lock(self.lock_file))
            except OSError as err:
                raise RunError(f"{self.what} {self.path}: cannot write the run directory "
                               f"({err.strerror or err.__class__.__name__})") from None
            if not locked:
                raise RunError(f"{self.what} {self.path}: another widthwise process is training this run (it holds "
                               f"{self.lock_file}); wait for it to end, or stop it first")
            remove_stale_temps(self.path, RUN_FILES.__contains__)  # what killed writes left
            for folder in (self.plots_dir, self.diagnosis_plots_dir):
                remove_stale_temps(folder, lambda name: name.endswith(".png"))
            try:
                yield self
            except BaseException as err:
                if made and not self.has_config():
                    self._unmake()
                elif getattr(err, "widthwise_log", None) is None:
                    with contextlib.suppress(AttributeError, TypeError):
                        err.widthwise_log = self.crash_file  # type: ignore[attr-defined]
                raise

    def _unmake(self) -> None:
        """Remove the folder of a start that failed before its ``config.yaml``, if it holds only what it left."""
        with contextlib.suppress(OSError):
            entries = list(self.path.iterdir())
            if all(map(self._left_by_a_start, entries)):
                for path in entries:
                    path.rmdir() if path.is_dir() else path.unlink()
                self.path.rmdir()

    @classmethod
    def open(cls, path: Path, what: str = "RUN_DIR") -> RunDir:
        """An existing run; :class:`RunError` naming ``what`` if it is missing or its ``config.yaml`` is corrupt."""
        run = cls(path, what)
        if not run.path.is_dir():
            raise RunError(f"{what} {run.path}: no such run directory")
        if not run.config_file.is_file():
            raise RunError(f"{what} {run.path}: no config.yaml, not a widthwise run directory")
        run.config()  # validates
        return run

    # -- paths ------------------------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def plan_file(self) -> Path:
        return self.path / "plan.txt"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def diagnostics_file(self) -> Path:
        """``diagnostics.jsonl``: what training measured every ``diagnostics.every`` steps."""
        return self.path / "diagnostics.jsonl"

    @property
    def summary_file(self) -> Path:
        return self.path / "summary.json"

    @property
    def samples_file(self) -> Path:
        return self.path / "samples.txt"

    @property
    def diagnosis_file(self) -> Path:
        """``diagnostics.json``: what ``widthwise diagnose`` measured on a checkpoint."""
        return self.path / "diagnostics.json"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK_FILE

    @property
    def crash_file(self) -> Path:
        """``crash.log``: the tracebacks of unexpected exceptions while the run trained (appended)."""
        return self.path / "crash.log"

    @property
    def plots_dir(self) -> Path:
        return self.path / "plots"

    @property
    def diagnosis_plots_dir(self) -> Path:
        return self.plots_dir / "diagnostics"

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / "tensorboard"

    def has_config(self) -> bool:
        """Whether the run got as far as writing its ``config.yaml`` (a start killed earlier left none)."""
        return self.config_file.is_file()

    def outputs(self) -> dict[str, Path]:
        """What a finished run shows a user, by label, where it exists: loss curve, plots, metrics, samples."""
        paths = {"loss curve": self.plots_dir / "loss.png", "plots": self.plots_dir, "metrics": self.metrics_file,
                 "samples": self.samples_file}
        return {label: path for label, path in paths.items() if path.exists()}

    # -- config.yaml ------------------------------------------------------------------------------------
    def _corrupt(self, name: str, why: str) -> RunError:
        return RunError(f"{self.what} {self.path}: {name} is corrupt ({why})")

    def _data(self) -> dict[str, Any]:
        if self._stored is None:
            try:
                text = self.config_file.read_text(encoding="utf-8")
                data = load_yaml(text, "config.yaml", RunError)
            except FileNotFoundError:
                raise RunError(f"{self.what} {self.path}: no config.yaml, not a widthwise run directory") from None
            except (OSError, UnicodeDecodeError) as err:
                raise self._corrupt("config.yaml", f"unreadable: {err.__class__.__name__}") from None
            except RunError as err:
                raise self._corrupt("config.yaml", str(err).removeprefix("config.yaml: ")) from None
            if not isinstance(data, dict):
                raise self._corrupt("config.yaml", "not a mapping of sections")
            if not isinstance(data.get("resolved", {}), dict):
                raise self._corrupt("config.yaml", "resolved: is not a mapping")
            self._stored = data
        return self._stored

    def config(self) -> Config:
        """The config the run was started with, as the user gave it (``null`` fields stay ``null``)."""
        try:
            return from_dict({k: v for k, v in self._data().items() if k not in ("plan", "resolved")})
        except ConfigError as err:
            raise self._corrupt("config.yaml", str(err)) from None

    @property
    def legacy(self) -> bool:
        """Written by the earlier layout: resolved values in the user's fields, no ``resolved.model``."""
        return "model" not in self._data().get("resolved", {})

    def resolved(self) -> dict[str, Any]:
        """The ``resolved:`` section (runtime, data, and per section the fields the run resolved).

        For a :attr:`legacy` directory the resolved model and scaling fields are read from the user's fields,
        where that layout stored them.
        """
        stored = dict(self._data().get("resolved", {}))
        if self.legacy:
            user = self.config().to_dict()
            for section, keys in RESOLVED_FIELDS.items():
                stored[section] = {k: user[section][k] for k in keys}
        return stored

    def plan(self) -> dict[str, Any]:
        """The plan the run trained with (``Plan.to_dict()``)."""
        plan = self._data().get("plan")
        if not isinstance(plan, dict):
            raise self._corrupt("config.yaml", "no plan: mapping")
        return plan

    def write_config(self, config: Config, resolved: Mapping[str, Any], plan: Plan, plan_table: str) -> None:
        """Write ``config.yaml`` (user config, ``resolved:``, ``plan:``) and ``plan.txt``; make the directory."""
        self.checkpoints_dir.mkdir(parents=True, exist_ok=True)
        data = {**config.to_dict(), "resolved": json.loads(json.dumps(json_safe(dict(resolved)))),
                "plan": plan.to_dict()}
        atomic_write_text(self.config_file, yaml.safe_dump(data, sort_keys=False))
        atomic_write_text(self.plan_file, plan_table + "\n")
        self._stored = None

    # -- summary.json, samples.txt, diagnostics.json ----------------------------------------------------
    def summary(self) -> dict[str, Any] | None:
        """``summary.json`` (``None`` while the run has written none); corrupt: :class:`RunError`."""
        try:
            summary = json.loads(self.summary_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
            raise self._corrupt("summary.json", err.__class__.__name__) from None
        if not isinstance(summary, dict):
            raise self._corrupt("summary.json", "not a JSON object")
        return summary

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        atomic_write_text(self.summary_file, json.dumps(json_safe(dict(summary)), indent=1) + "\n")

    def samples(self) -> str | None:
        """The text sampled from the trained model, ``None`` when there is none."""
        return self.samples_file.read_text(encoding="utf-8").rstrip() if self.samples_file.is_file() else None

    def write_samples(self, text: str) -> None:
        atomic_write_text(self.samples_file, text + "\n")

    def write_diagnosis(self, result: Mapping[str, Any]) -> None:
        """Write ``diagnostics.json`` (``widthwise diagnose``'s measurement)."""
        atomic_write_text(self.diagnosis_file, json.dumps(json_safe(dict(result)), indent=1) + "\n")

    # -- metrics.jsonl, diagnostics.jsonl, TensorBoard --------------------------------------------------
    def metrics(self) -> list[dict[str, Any]]:
        """The records of ``metrics.jsonl`` (none if absent)."""
        return read_metrics(self.metrics_file)

    def diagnostics_history(self, up_to: int | None = None) -> list[dict[str, Any]]:
        """The records of ``diagnostics.jsonl`` (none if absent), those up to step ``up_to`` if given."""
        records = read_metrics(self.diagnostics_file)
        return records if up_to is None else [r for r in records if r.get("step", 0) <= up_to]

    def open_logs(self, diagnostics: bool, tensorboard: bool, resume_step: int | None = None) -> MetricsLog:
        """The live logs: ``metrics.jsonl`` (and ``diagnostics.jsonl``), TensorBoard; ``resume_step``: MetricsLog's."""
        files = {"metrics": self.metrics_file, **({"diagnostics": self.diagnostics_file} if diagnostics else {})}
        return MetricsLog(files, self.tensorboard_dir if tensorboard else None, resume_step)

    # -- checkpoints/ -----------------------------------------------------------------------------------
    def checkpoint_steps(self) -> list[int]:
        """Steps of the complete checkpoints on disk, oldest first."""
        if not self.checkpoints_dir.is_dir():
            return []
        return sorted(int(p.name.removeprefix("step_")) for p in self.checkpoints_dir.glob("step_*")
                      if p.is_dir() and p.name.removeprefix("step_").isdigit())

    def checkpoint(self, step: int | None = None) -> Checkpoint | None:
        """The latest checkpoint (``None`` if the run wrote none yet), or the one at ``step`` (absent: RunError)."""
        if step is None:
            try:
                path = latest_checkpoint(self.checkpoints_dir)
            except UnicodeDecodeError as err:  # the pointer holds a folder name: UTF-8 text
                raise CheckpointError(f"{self.checkpoints_dir / 'latest'}: not UTF-8 text (invalid byte at offset "
                                      f"{err.start}), not a checkpoint pointer") from None
            return None if path is None else load_checkpoint(path)
        path = self.checkpoints_dir / f"step_{step:08d}"
        if not path.is_dir():
            have = ", ".join(f"step_{s:08d}" for s in self.checkpoint_steps()) or "none"
            raise RunError(f"{self.what} {self.path}: no checkpoint step_{step:08d} in {self.checkpoints_dir} "
                           f"(have: {have})")
        return load_checkpoint(path)

    def save_checkpoint(self, ckpt: Checkpoint, keep: int) -> Path:
        """Write ``ckpt`` atomically and point ``latest`` at it, keeping the newest ``keep``."""
        return save_checkpoint(self.checkpoints_dir, ckpt, keep=keep)
