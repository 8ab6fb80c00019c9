"""The training loop behind ``widthwise train``: resumable, logged, checkpointed, divergence-aware.

:func:`start` trains a :class:`~widthwise.app.config.Config` into a new run directory (the contract of
DESIGN.md, owned by :class:`~widthwise.app.rundir.RunDir`) and returns the summary; :func:`resume` continues one
from its latest checkpoint and reproduces, bit for bit, the losses an uninterrupted run would have logged (same
machine, threads and settings; compile off). The steps themselves are a :class:`~widthwise.app.session.Session`'s;
this module adds the loop: logging, evaluation and diagnostics at their cadence, checkpoints, signals, the summary.
"""

from __future__ import annotations

import logging
import math
import signal
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..diagnostics.monitor import TrainingDiagnostics
from ..diagnostics.multiplier_stats import multiplier_groups, multiplier_stats
from ..errors import EXIT_DIVERGED, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, ConfigError
from ..schedules import ScheduleRatio
from .checkpoint import Checkpoint, require_fields
from .config import Config, apply_overrides, config_keys
from .distributed import Distributed, process_group
from .metrics import MetricsLog
from .rundir import RunDir
from .session import Session

logger = logging.getLogger(__name__)

#: Keys a resume may change: the length of the run and how it is observed, not what it computes.
RESUMABLE_KEYS = config_keys("resumable")
FINAL_LOSS_WINDOW = 10


@dataclass
class Result:
    """What :func:`start` and :func:`resume` return: the summary (as in ``summary.json``) and the exit code."""

    summary: dict[str, Any]
    exit_code: int
    run: RunDir

    @property
    def run_dir(self) -> Path:
        return self.run.path


def start(config: Config, out: Path) -> Result:
    """Train ``config`` into a new run directory ``out`` (refused if ``out`` already holds anything).

    Under torchrun every rank calls it (``train.parallel``: ddp or fsdp); rank 0 writes the run directory.
    """
    t = config.train
    with (process_group(t.parallel, t.dist_timeout_s, t.device) as d, _lost_ranks(d, t.dist_timeout_s),
          ExitStack() as held):
        run = d.agree(lambda: _hold(RunDir.create(out, "--out"), held, new=True), lambda: RunDir(out, "--out"))
        return _train(config, run, stored=None, d=d)


def resume(run_dir: Path, overrides: list[str] | tuple[str, ...] = ()) -> Result:
    """Continue the run in ``run_dir`` from its latest checkpoint; ``overrides`` may extend ``train.steps``."""
    run = RunDir.open(run_dir, "--resume")
    stored = run.config()
    config = apply_overrides(stored, overrides)
    for key in _changed_keys(stored, config):
        if key not in RESUMABLE_KEYS:
            raise ConfigError(f"--set {key}: cannot change on resume (only {', '.join(RESUMABLE_KEYS)})")
    t = config.train
    with (process_group(t.parallel, t.dist_timeout_s, t.device) as d, _lost_ranks(d, t.dist_timeout_s),
          ExitStack() as held):
        d.agree(lambda: _hold(run, held, new=False), lambda: run)
        return _train(config, run, stored, d)


def _hold(run: RunDir, stack: ExitStack, new: bool) -> RunDir:
    """Take ``run``'s lock (:meth:`RunDir.hold`) until ``stack`` closes; a ``new`` run is checked empty again under
    it (another start may have taken the directory first)."""
    stack.enter_context(run.hold(new))
    return RunDir.create(run.path, run.what) if new else run


@contextmanager
def _lost_ranks(d: Distributed, timeout_s: float) -> Iterator[None]:
    """A collective that fails (another rank died, or did not answer within ``timeout_s``) ends this rank with
    one line and :data:`EXIT_FAILED`, not a traceback."""
    try:
        yield
    except RuntimeError as err:
        text = str(err)
        if not d.active or not any(word in text for word in ("gloo", "NCCL", "c10d", "Connection")):
            raise
        cause = text.split("]", 1)[-1].strip().split(". ")[0]
        logger.error(f"rank {d.rank}: lost the other ranks ({cause}): one died or did not answer within "
                     f"train.dist_timeout_s={timeout_s:g} s; continue from the last checkpoint with --resume")
        raise SystemExit(EXIT_FAILED) from None


def _changed_keys(a: Config, b: Config) -> list[str]:
    da, db = a.to_dict(), b.to_dict()
    return [f"{s}.{k}" for s in da for k in da[s] if da[s][k] != db[s][k]]


@dataclass
class _Progress:
    """What the loop keeps beside the session: timings, the losses the summary needs, a stop request."""

    elapsed: float = 0.0  # wall seconds over all segments of the run
    train_seconds: float = 0.0  # time in optimizer steps only (for tokens/s)
    diagnostics_seconds: float = 0.0  # time spent measuring diagnostics, outside the optimizer steps
    initial_loss: float | None = None
    recent: list[float] = field(default_factory=list)
    val_loss: float | None = None
    stop_requested: str | None = None

    def state(self) -> dict[str, Any]:
        """The checkpoint's share (JSON)."""
        return {"elapsed_s": self.elapsed, "train_s": self.train_seconds, "diagnostics_s": self.diagnostics_seconds,
                "initial_loss": self.initial_loss, "recent": self.recent, "val_loss": self.val_loss}

    @classmethod
    def from_state(cls, s: dict[str, Any], where: str = "checkpoint state.json") -> _Progress:
        """The progress a checkpoint recorded; a :class:`CheckpointError` naming a field it lacks."""
        number, optional = (int, float), (int, float, type(None))
        require_fields(s, {"elapsed_s": number, "train_s": number, "initial_loss": optional, "recent": list,
                           "val_loss": optional}, where)
        return cls(s["elapsed_s"], s["train_s"], s.get("diagnostics_s", 0.0), s["initial_loss"], s["recent"],
                   s["val_loss"])


@contextmanager
def _deferred_signals(progress: _Progress) -> Iterator[None]:
    """SIGTERM/SIGINT ask the loop to stop after the current step (then it checkpoints and leaves).

    The handler only sets a flag, so a step is never cut in half; a second signal acts as usual.
    """
    def handler(signum, frame):
        progress.stop_requested = signal.Signals(signum).name
        for sig, old in previous.items():
            signal.signal(sig, old)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.getsignal(sig)
            signal.signal(sig, handler)
    try:
        yield
    finally:
        if threading.current_thread() is threading.main_thread():
            for sig, old in previous.items():
                signal.signal(sig, old)


def _finished(run: RunDir, config: Config) -> Result | None:
    """The result of a run that has nothing left to do (diverged, or completed at ``train.steps``), else ``None``."""
    previous = run.summary()
    if previous is None:
        return None
    if previous.get("status") == "diverged":
        logger.info(f"{run.path} diverged at step {previous.get('steps')}; nothing to resume")
        return Result(previous, EXIT_DIVERGED, run)
    if previous.get("status") == "completed" and previous.get("steps") == config.train.steps:
        logger.info(f"{run.path} is already complete ({previous.get('steps')} steps)")
        return Result(previous, EXIT_OK, run)
    return None


class _NoLogs:
    """The logs of a rank other than 0: nothing is written."""

    def write(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _train(config: Config, run: RunDir, stored: Config | None, d: Distributed) -> Result:
    """Train (or, given the run's stored config as ``stored``, continue) into ``run``."""
    if not d.main:
        logging.getLogger("widthwise").setLevel(logging.WARNING)
    ckpt = None
    if stored is not None:
        done = _finished(run, config)
        if done is not None:
            return done
        ckpt = run.checkpoint()
        if ckpt is not None:
            if ckpt.step > config.train.steps:
                raise ConfigError(f"train.steps: {config.train.steps} is below the checkpoint's step {ckpt.step}")
            _check_extension(stored, config, ckpt.step)
    started = time.perf_counter()
    session = Session(config, d)
    progress = _Progress()
    if ckpt is not None:
        session.check_config(ckpt.session_state())  # config.yaml edited since the checkpoint: refused, named
        session.load_state_dict(ckpt.session_state())
        progress = _Progress.from_state(ckpt.state, f"checkpoint step {ckpt.step} (state.json)")
    if d.main:
        run.write_config(config, session.resolved(), session.plan,
                         session.built.plan.table(config.optim.lr, config.optim.weight_decay,
                                                  muon_lr=config.optim.muon_lr))
    ranks = f", {d.world_size} processes ({d.parallel})" if d.active else ""
    if not d.active and d.parallel != "none":
        ranks = f", 1 process (train.parallel={d.parallel} takes effect under torchrun)"
    logger.info(f"{'resuming' if ckpt else 'training'} {run.path} from step {session.step}: "
                f"{session.model.num_parameters(exclude_embedding=False) / 1e6:.2f}M parameters, recipe "
                f"{session.built.recipe.name}, multipliers {config.multipliers.kind}, {config.optim.name}, "
                f"{session.runtime.describe()}{ranks}")
    with _deferred_signals(progress):  # before the logs open: a signal once metrics.jsonl exists is deferred
        loop = _Loop(session, run, progress, started, resumed=stored is not None)
        try:
            status, code = loop.run()
        finally:
            loop.logs.close()
    summary = _summary(session, progress, status, loop.monitor is not None)
    t = config.train
    sample = None
    if status == "completed" and t.sample_tokens and (d.main or d.fsdp):  # FSDP: every rank runs the forwards
        sample = session.sample(t.sample_prompt, t.sample_tokens, t.seed)
    if d.main:
        rates = [r["tokens_per_s"] for r in run.metrics() if r.get("tokens_per_s")]
        summary["tokens_per_s_median"] = statistics.median(rates) if rates else None  # steady state, no compile
        run.write_summary(summary)
        if status in ("completed", "diverged") and config.train.plots:
            from .train_plots import write_plots

            write_plots(run)
        if sample is not None:
            run.write_samples(sample)
    d.barrier()
    return Result(summary, code, run)


def _check_extension(old: Config, new: Config, step: int) -> None:
    """A longer ``train.steps`` is fine while the old LR schedule has not started to decay at ``step``."""
    if new.train.steps == old.train.steps:
        return
    s = old.schedule
    start = ScheduleRatio(s.warmup, old.train.steps, s.kind, s.min_ratio, s.decay_fraction).decay_start
    if step > start:
        raise ConfigError(f"train.steps: the {s.kind} schedule was planned for {old.train.steps} steps and has been "
                          f"decaying since step {start}; extending it would jump the LR (start a new run, or use "
                          "schedule.kind=wsd or constant for runs you want to extend, before their decay)")



class _Loop:
    """The loop over a session: log, evaluate and measure diagnostics at their cadence, checkpoint, stop."""

    def __init__(self, session: Session, run: RunDir, progress: _Progress, started: float, resumed: bool) -> None:
        self.session, self.rundir, self.progress = session, run, progress
        self.started, self.last_elapsed = started, progress.elapsed
        config = session.config
        dc = config.diagnostics
        self.monitor: TrainingDiagnostics | None = None
        measured = session.measured() if dc.every else None  # rank 0's whole model (FSDP2: gathered by all)
        if measured is not None:
            gain_batch = session.val[0][0][: dc.gain_sequences].to(session.runtime.device) if dc.gains else None
            self.monitor = TrainingDiagnostics(*measured, gain_batch, spectra=dc.spectra,
                                               drift_threshold=dc.drift_threshold)
        self.multipliers: dict[str, list[Any]] | None = None  # multiplier_groups of the measured model
        self.logs: MetricsLog | _NoLogs = _NoLogs()
        if session.dist.main:
            self.logs = run.open_logs(self.monitor is not None, config.train.tensorboard,
                                      resume_step=session.step if resumed else None)

    def save(self) -> None:
        """Checkpoint the session with the loop's bookkeeping."""
        self.progress.elapsed = self.last_elapsed + (time.perf_counter() - self.started)
        state = self.session.state_dict()  # FSDP2: gathered on every rank
        if self.session.dist.main:
            ckpt = Checkpoint.of(state, **self.progress.state())
            self.rundir.save_checkpoint(ckpt, keep=self.session.config.train.keep_checkpoints)

    def measure_diagnostics(self) -> None:
        """Write a ``diagnostics.jsonl`` record (TensorBoard: pooled by layer type); warn about symmetry drift."""
        session = self.session
        tick = time.perf_counter()
        session.measured()  # FSDP2: rank 0's replica gathers the weights (every rank takes part)
        if self.monitor is None:
            return
        record, scalars, warnings = self.monitor.measure(session.step)
        self.progress.diagnostics_seconds += time.perf_counter() - tick
        self.logs.write({"step": session.step, "tokens": session.tokens, "lr": session.lr(), **record},
                        stream="diagnostics", scalars=scalars)
        for warning in warnings:
            logger.warning(f"step {session.step}: {warning}")

    def diverged(self, loss: float) -> bool:
        if not math.isfinite(loss):
            return True
        factor = self.session.config.train.divergence_factor
        initial = self.progress.initial_loss
        return factor is not None and initial is not None and loss > factor * initial

    def run(self) -> tuple[str, int]:
        """Train to ``train.steps``: the status (completed, diverged, interrupted) and exit code."""
        session, progress, t = self.session, self.progress, self.session.config.train
        bar = tqdm(total=t.steps, initial=session.step, disable=not (t.progress and session.dist.main) or None,
                   unit="step", dynamic_ncols=True, file=sys.stderr, desc="train")
        try:
            with logging_redirect_tqdm([logging.getLogger("widthwise")]):
                while session.step < t.steps:
                    if self.step(bar):
                        return "diverged", EXIT_DIVERGED
                    every = session.config.diagnostics.every
                    if every and (session.step % every == 0 or session.step == t.steps):
                        self.measure_diagnostics()
                    bar.update(1)
                    if session.step % t.checkpoint_every == 0 or session.step == t.steps:
                        self.save()
                    stop = progress.stop_requested is not None
                    if session.dist.active:  # every rank stops at the same step: the one where they agree
                        agree = session.step % t.log_every == 0 or session.step % t.checkpoint_every == 0
                        stop = agree and session.dist.any(stop)  # a signal after this read waits for the next
                        if stop and not progress.stop_requested:
                            progress.stop_requested = "another rank's signal"
                    if stop and session.step < t.steps:
                        bar.close()
                        if session.step % t.checkpoint_every != 0:
                            self.save()
                        logger.info(f"interrupted ({progress.stop_requested}) at step {session.step}; checkpoint "
                                    f"written; continue with `widthwise train --resume {self.rundir.path}`")
                        return "interrupted", EXIT_INTERRUPTED
        finally:
            bar.close()
        return "completed", EXIT_OK

    def step(self, bar: tqdm) -> bool:
        """One training step, logged (and evaluated) at its cadence; whether the run diverged."""
        session, progress, t = self.session, self.progress, self.session.config.train
        tick = time.perf_counter()
        after = session.step + 1  # the step about to be taken: whether its loss is read decides its collectives
        log_now = after % t.log_every == 0 or after == t.steps or after == 1
        read = log_now or progress.initial_loss is None  # the same on every rank (the checkpoint's progress)
        loss_t, norm_t = session.train_step(reduce=read)
        loss = float(loss_t) if read else None  # the host syncs with the device only here
        step_s = time.perf_counter() - tick
        progress.train_seconds += step_s
        progress.elapsed = self.last_elapsed + (time.perf_counter() - self.started)
        if loss is None:
            return False
        progress.recent = ([*progress.recent, loss])[-FINAL_LOSS_WINDOW:]
        record: dict[str, Any] = {
            "step": session.step, "tokens": session.tokens, "train_loss": loss, "lr": session.lr(),
            "grad_norm": float(norm_t), "tokens_per_s": round(t.batch_size * t.seq_len / step_s, 1),
            "elapsed_s": round(progress.elapsed, 3),
        }
        diverged = self.diverged(loss)
        if progress.initial_loss is None:
            progress.initial_loss = loss
        if session.step % t.eval_every == 0 or session.step == t.steps or diverged:
            if not diverged:
                progress.val_loss = session.evaluate()
                record["val_loss"] = progress.val_loss
            measured = session.measured()
            if measured is not None:
                if self.multipliers is None:  # found once: the model's multipliers do not change
                    self.multipliers = multiplier_groups(measured[0])
                record["multipliers"] = multiplier_stats(measured[0], groups=self.multipliers)
        self.logs.write(record)
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{record['tokens_per_s']:.0f}", refresh=False)
        if diverged:
            logger.warning(f"diverged at step {session.step} (loss {loss:.4g}, initial {progress.initial_loss:.4g}, "
                           f"factor {t.divergence_factor})")
        return diverged


def _summary(session: Session, progress: _Progress, status: str, diagnostics: bool) -> dict[str, Any]:
    final = statistics.fmean(progress.recent) if progress.recent else None
    train_s = progress.train_seconds
    return {
        "status": status, "steps": session.step, "tokens": session.tokens,
        "final_train_loss": final, "val_loss": progress.val_loss, "wall_s": round(progress.elapsed, 3),
        "train_s": round(train_s, 3),
        "diagnostics_s": round(progress.diagnostics_seconds, 3),
        "diagnostics_overhead": (round(progress.diagnostics_seconds / train_s, 5)
                                 if train_s and diagnostics else None),
        "tokens_per_s": round(session.tokens / train_s, 1) if train_s else None,
        "runtime": session.runtime.describe(), "parameters": session.model.num_parameters(exclude_embedding=False),
        "non_embedding_parameters": session.model.num_parameters(exclude_embedding=True),
        "multipliers": len(session.built.multiplier_names), "world_size": session.dist.world_size,
    }


__all__ = ["RESUMABLE_KEYS", "Result", "resume", "start"]
