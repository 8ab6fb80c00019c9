"""The training loop behind ``widthwise train``: resumable, logged, checkpointed, divergence-aware.

:func:`start` trains a :class:`~widthwise.app.config.Config` into a new run directory (the contract of
DESIGN.md: ``config.yaml``, ``metrics.jsonl``, ``summary.json``, ``checkpoints/``, ``plots/``) and returns
the summary; :func:`resume` continues one from its latest checkpoint and reproduces, bit for bit, the losses
an uninterrupted run would have logged (same machine, threads and settings; compile off).
"""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from tqdm.auto import tqdm

from ..diagnostics.monitor import TrainingDiagnostics
from ..diagnostics.multiplier_stats import multiplier_stats
from ..errors import EXIT_DIVERGED, EXIT_INTERRUPTED, EXIT_OK, CheckpointError, ConfigError, RunError
from ..optim.build import muon_ns_dtype
from ..schedules import ScheduleRatio
from .atomic import atomic_write_text
from .checkpoint import Checkpoint, latest_checkpoint, load_checkpoint, save_checkpoint
from .config import Config, apply_overrides, config_keys, from_dict, yaml_line
from .data import BatchSampler, TokenData, validation_batches
from .metrics import MetricsLog, json_safe, read_metrics
from .runtime import Runtime, resolve_runtime
from .setup import Built, apply_update, build, config_device, load_data, resolved_config

if TYPE_CHECKING:
    from torch import nn

#: Keys a resume may change: the length of the run and how it is observed, not what it computes.
RESUMABLE_KEYS = config_keys("resumable")
FINAL_LOSS_WINDOW = 10


@dataclass
class Result:
    """What :func:`start` and :func:`resume` return: the summary (as in ``summary.json``) and the exit code."""

    summary: dict[str, Any]
    exit_code: int
    run_dir: Path


def start(config: Config, out: Path, **kwargs: Any) -> Result:
    """Train ``config`` into a new run directory ``out`` (refused if ``out`` already holds anything)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunError(f"--out {out}: already exists and is not empty; use --resume {out} or another --out")
    return _run(config, out, resume=None, **kwargs)


def resume(run_dir: Path, overrides: list[str] | tuple[str, ...] = (), **kwargs: Any) -> Result:
    """Continue the run in ``run_dir`` from its latest checkpoint; ``overrides`` may extend ``train.steps``."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir, "--resume")
    changed = apply_overrides(config, overrides)
    for key in _changed_keys(config, changed):
        if key not in RESUMABLE_KEYS:
            raise ConfigError(f"--set {key}: cannot change on resume (only {', '.join(RESUMABLE_KEYS)})")
    return _run(changed, run_dir, resume=config, **kwargs)


def read_run_config(run_dir: Path, what: str = "RUN_DIR") -> Config:
    """The config a run directory was trained with (its ``config.yaml``); :class:`RunError` names ``what``."""
    run_dir = Path(run_dir)
    config_file = run_dir / "config.yaml"
    if not run_dir.is_dir():
        raise RunError(f"{what} {run_dir}: no such run directory")
    if not config_file.is_file():
        raise RunError(f"{what} {run_dir}: no config.yaml, not a widthwise run directory")
    try:
        data = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise RunError(f"{what} {run_dir}: config.yaml is corrupt (not valid YAML{yaml_line(err)})") from None
    if not isinstance(data, dict):
        raise RunError(f"{what} {run_dir}: config.yaml is corrupt (not a mapping of sections)")
    try:
        return from_dict({k: v for k, v in data.items() if k not in ("plan", "resolved")})
    except ConfigError as err:
        raise RunError(f"{what} {run_dir}: config.yaml is corrupt ({err})") from None


def _changed_keys(a: Config, b: Config) -> list[str]:
    da, db = a.to_dict(), b.to_dict()
    return [f"{s}.{k}" for s in da for k in da[s] if da[s][k] != db[s][k]]


@contextmanager
def _deferred_signals(session: _Run):
    """SIGTERM/SIGINT ask the loop to stop after the current step (then it checkpoints and leaves).

    The handler only sets a flag, so a step is never cut in half; a second signal acts as usual.
    """
    def handler(signum, frame):
        session.stop_requested = signal.Signals(signum).name
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


class _Run:
    """State of one training process over a run directory."""

    def __init__(self, config: Config, run_dir: Path, log: Callable[[str], None]) -> None:
        self.config, self.run_dir, self.log = config, run_dir, log
        t = config.train
        self.data: TokenData = load_data(config)
        vocab = config.model.vocab_size or self.data.vocab_size
        if vocab < self.data.vocab_size:
            raise ConfigError(f"model.vocab_size: {vocab} is smaller than the tokenizer's {self.data.vocab_size}")
        self.built: Built = build(config, vocab, config_device(config))
        self.model = self.built.model
        flops = self.model.flops_per_token(t.seq_len) * t.batch_size * t.seq_len
        self.runtime: Runtime = resolve_runtime(t.device, t.dtype, t.compile, t.threads, config.model.width,
                                                flops, t.steps)
        self.step_model = torch.compile(self.model) if self.runtime.compile else self.model
        # Evaluation runs without grad: compiled, that is a second graph to compile, worth it on a GPU only.
        self.eval_model = self.step_model if self.runtime.device.type == "cuda" else self.model
        self.sampler = BatchSampler(self.data.train, t.batch_size, t.seq_len, t.seed)
        self.val = validation_batches(self.data.val, t.batch_size, t.seq_len, t.eval_tokens)
        dc = config.diagnostics
        self.diagnostics: TrainingDiagnostics | None = None
        if dc.every:
            gain_batch = self.val[0][0][: dc.gain_sequences].to(self.runtime.device) if dc.gains else None
            self.diagnostics = TrainingDiagnostics(self.model, self.built.optimizer, gain_batch, spectra=dc.spectra,
                                                   drift_threshold=dc.drift_threshold)
        self.diagnostics_seconds = 0.0  # time spent measuring diagnostics, outside the optimizer steps
        self.step = 0
        self.tokens = 0
        self.elapsed = 0.0  # wall seconds over all segments of the run
        self.train_seconds = 0.0  # time in optimizer steps only (for tokens/s)
        self.initial_loss: float | None = None
        self.recent: list[float] = []
        self.val_loss: float | None = None
        self.stop_requested: str | None = None

    # -- checkpoints ------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict(), "tokens": self.tokens, "elapsed_s": self.elapsed,
                "train_s": self.train_seconds, "diagnostics_s": self.diagnostics_seconds,
                "initial_loss": self.initial_loss, "recent": self.recent,
                "val_loss": self.val_loss, "world_size": 1, "data_fingerprint": self.data.fingerprint,
                "vocab_size": self.built.model_config.vocab_size}

    def save(self) -> None:
        weights = unique_state_dict(self.model)
        scheduler = {k: v for k, v in self.built.scheduler.state_dict().items() if k != "lr_lambdas"}
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        ckpt = Checkpoint(self.step, weights, self.built.optimizer.state_dict(), scheduler, rng, self.state())
        save_checkpoint(self.run_dir / "checkpoints", ckpt, keep=self.config.train.keep_checkpoints)

    def restore(self, ckpt: Checkpoint) -> None:
        s = ckpt.state
        world = int(os.environ.get("WORLD_SIZE", 1))
        if s.get("world_size") != world:
            raise CheckpointError(f"checkpoint step {ckpt.step}: written with world size {s.get('world_size')}, "
                                  f"resumed with {world}; resume with the same number of processes")
        if s.get("data_fingerprint") != self.data.fingerprint:
            raise CheckpointError(f"checkpoint step {ckpt.step}: the training data changed since it was written "
                                  "(corpus, tokenizer or split differ)")
        missing, unexpected = self.model.load_state_dict(ckpt.model, strict=False)
        shared = set(self.model.state_dict()) - set(unique_state_dict(self.model))  # tied names, stored once
        bad = unexpected or sorted(set(missing) - shared)
        if bad:
            raise CheckpointError(f"checkpoint step {ckpt.step}: weights do not fit the model ({bad[0]!r})")
        try:
            self.built.optimizer.load_state_dict(ckpt.optimizer)
        except (ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(f"checkpoint step {ckpt.step}: optimizer state does not fit ({err})") from None
        total = self.built.scheduler.lr_lambdas[0].total
        self.built.scheduler.load_state_dict({**ckpt.scheduler, "lr_lambdas": [None]})
        self.built.scheduler.lr_lambdas[0].total = total  # a longer train.steps extends the schedule
        torch.set_rng_state(ckpt.rng["torch"])
        if "cuda" in ckpt.rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt.rng["cuda"])
        self.sampler.load_state_dict(s["sampler"])
        self.step, self.tokens = ckpt.step, s["tokens"]
        self.elapsed, self.train_seconds = s["elapsed_s"], s["train_s"]
        self.diagnostics_seconds = s.get("diagnostics_s", 0.0)
        self.initial_loss, self.recent, self.val_loss = s["initial_loss"], s["recent"], s["val_loss"]

    # -- the loop ---------------------------------------------------------------------------------------
    def lr_at_last(self) -> float:
        """The base LR the schedule gave the step just taken (each group has its plan factor on top)."""
        return self.config.optim.lr * self.built.scheduler.lr_lambdas[0](self.step - 1)

    def train_step(self) -> tuple[float, float]:
        x, y = self.sampler.next_batch()
        device = self.runtime.device
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with self.runtime.autocast():
            loss = self.step_model(x, y)
        loss.backward()
        norm = apply_update(self.built, self.config)
        self.step += 1
        self.tokens += x.numel()
        return loss.detach(), norm

    @torch.no_grad()
    def evaluate(self) -> float:
        self.model.eval()
        total, count = 0.0, 0
        for x, y in self.val:
            x, y = x.to(self.runtime.device), y.to(self.runtime.device)
            with self.runtime.autocast():
                loss = self.eval_model(x, y)
            total += float(loss) * y.numel()
            count += y.numel()
        self.model.train()
        return total / max(count, 1)

    def measure_diagnostics(self, metrics: MetricsLog) -> None:
        """Write a ``diagnostics.jsonl`` record (TensorBoard: pooled by layer type); warn about symmetry drift."""
        assert self.diagnostics is not None
        tick = time.perf_counter()
        record, scalars, warnings = self.diagnostics.measure(self.step)
        self.diagnostics_seconds += time.perf_counter() - tick
        metrics.write({"step": self.step, "tokens": self.tokens, "lr": self.lr_at_last(), **record},
                      stream="diagnostics", scalars=scalars)
        for warning in warnings:
            tqdm.write(f"widthwise: warning: step {self.step}: {warning}", file=sys.stderr)

    def diverged(self, loss: float) -> bool:
        if not math.isfinite(loss):
            return True
        factor = self.config.train.divergence_factor
        return factor is not None and self.initial_loss is not None and loss > factor * self.initial_loss

    def summary(self, status: str) -> dict[str, Any]:
        final = statistics.fmean(self.recent) if self.recent else None
        return {
            "status": status, "steps": self.step, "tokens": self.tokens,
            "final_train_loss": final, "val_loss": self.val_loss, "wall_s": round(self.elapsed, 3),
            "train_s": round(self.train_seconds, 3),
            "diagnostics_s": round(self.diagnostics_seconds, 3),
            "diagnostics_overhead": (round(self.diagnostics_seconds / self.train_seconds, 5)
                                     if self.train_seconds and self.diagnostics is not None else None),
            "tokens_per_s": round(self.tokens / self.train_seconds, 1) if self.train_seconds else None,
            "runtime": self.runtime.describe(), "parameters": self.model.num_parameters(exclude_embedding=False),
            "non_embedding_parameters": self.model.num_parameters(exclude_embedding=True),
            "multipliers": len(self.built.multiplier_names), "world_size": 1,
        }


def unique_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with each tensor once (safetensors refuses shared storage; tied weights)."""
    weights, seen = {}, set()
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            weights[name] = tensor
    return weights


def _write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    atomic_write_text(run_dir / "summary.json", json.dumps(json_safe(summary), indent=1) + "\n")


def _run(config: Config, run_dir: Path, resume: Config | None, log: Callable[[str], None] | None = None) -> Result:
    """Train (or, given the run's stored config as ``resume``, continue) into ``run_dir``."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise ConfigError("WORLD_SIZE > 1: `widthwise train` runs one process; distributed runs are not supported "
                          "yet (use the library with torchrun/DDP in your own loop)")
    ckpt = None
    if resume is not None:
        summary_file = run_dir / "summary.json"
        if summary_file.is_file():
            try:
                previous = json.loads(summary_file.read_text(encoding="utf-8"))
            except ValueError:
                raise RunError(f"--resume {run_dir}: summary.json is corrupt") from None
            if previous.get("status") == "diverged":
                log(f"widthwise: {run_dir} diverged at step {previous.get('steps')}; nothing to resume")
                return Result(previous, EXIT_DIVERGED, run_dir)
            if previous.get("status") == "completed" and previous.get("steps") == config.train.steps:
                log(f"widthwise: {run_dir} is already complete ({previous.get('steps')} steps)")
                return Result(previous, EXIT_OK, run_dir)
        path = latest_checkpoint(run_dir / "checkpoints")
        if path is not None:
            ckpt = load_checkpoint(path)
            if ckpt.step > config.train.steps:
                raise ConfigError(f"train.steps: {config.train.steps} is below the checkpoint's step {ckpt.step}")
            _check_extension(resume, config, ckpt.step)
    started = time.perf_counter()
    session = _Run(config, run_dir, log)
    if ckpt is not None:
        session.restore(ckpt)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    extra = {"runtime": {**session.runtime.to_dict(), "muon_ns_dtype": muon_ns_dtype(session.built.optimizer)},
             "data_fingerprint": session.data.fingerprint,
             "train_tokens": len(session.data.train), "val_tokens": len(session.data.val),
             "train_documents": session.data.train_documents, "val_documents": session.data.val_documents}
    atomic_write_text(run_dir / "config.yaml",
                      yaml.safe_dump(resolved_config(config, session.built, extra), sort_keys=False))
    atomic_write_text(run_dir / "plan.txt", session.built.plan.table(config.optim.lr, config.optim.weight_decay,
                                                                     muon_lr=config.optim.muon_lr) + "\n")
    log(f"widthwise: {'resuming' if ckpt else 'training'} {run_dir} from step {session.step}: "
        f"{session.model.num_parameters(exclude_embedding=False) / 1e6:.2f}M parameters, recipe "
        f"{session.built.recipe.name}, multipliers {config.multipliers.kind}, {config.optim.name}, "
        f"{session.runtime.describe()}")
    streams = ("metrics", "diagnostics") if session.diagnostics is not None else ("metrics",)
    metrics = MetricsLog(run_dir, config.train.tensorboard, resume_step=session.step if resume else None,
                         streams=streams)
    status, code = "completed", EXIT_OK
    try:
        with _deferred_signals(session):
            status, code = _loop(session, metrics, started)
    finally:
        metrics.close()
    summary = session.summary(status)
    rates = [r["tokens_per_s"] for r in read_metrics(run_dir / "metrics.jsonl") if r.get("tokens_per_s")]
    summary["tokens_per_s_median"] = statistics.median(rates) if rates else None  # steady state, no compile
    _write_summary(run_dir, summary)
    if status in ("completed", "diverged") and config.train.plots:
        from .train_plots import write_plots

        write_plots(run_dir)
    if status == "completed" and config.train.sample_tokens:
        sample = generate_sample(session)
        atomic_write_text(run_dir / "samples.txt", sample + "\n")
    return Result(summary, code, run_dir)


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


def _loop(session: _Run, metrics: MetricsLog, started: float) -> tuple[str, int]:
    t = session.config.train
    last_elapsed = session.elapsed
    bar = tqdm(total=t.steps, initial=session.step, disable=not t.progress or None, unit="step",
               dynamic_ncols=True, file=sys.stderr, desc="train")
    try:
        while session.step < t.steps:
            tick = time.perf_counter()
            loss_t, norm_t = session.train_step()
            log_now = session.step % t.log_every == 0 or session.step == t.steps or session.step == 1
            loss = float(loss_t) if log_now or session.initial_loss is None else None
            step_s = time.perf_counter() - tick
            session.train_seconds += step_s
            session.elapsed = last_elapsed + (time.perf_counter() - started)
            if loss is not None:
                session.recent = ([*session.recent, loss])[-FINAL_LOSS_WINDOW:]
                record: dict[str, Any] = {
                    "step": session.step, "tokens": session.tokens, "train_loss": loss, "lr": session.lr_at_last(),
                    "grad_norm": float(norm_t), "tokens_per_s": round(t.batch_size * t.seq_len / step_s, 1),
                    "elapsed_s": round(session.elapsed, 3),
                }
                diverged = session.diverged(loss)
                if session.initial_loss is None:
                    session.initial_loss = loss
                if session.step % t.eval_every == 0 or session.step == t.steps or diverged:
                    if not diverged:
                        session.val_loss = session.evaluate()
                        record["val_loss"] = session.val_loss
                    record["multipliers"] = multiplier_stats(session.model)
                metrics.write(record)
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{record['tokens_per_s']:.0f}", refresh=False)
                if diverged:
                    session.log(f"widthwise: diverged at step {session.step} (loss {loss:.4g}, initial "
                                f"{session.initial_loss:.4g}, factor {t.divergence_factor})")
                    return "diverged", EXIT_DIVERGED
            every = session.config.diagnostics.every
            if session.diagnostics is not None and (session.step % every == 0 or session.step == t.steps):
                session.measure_diagnostics(metrics)
            bar.update(1)
            if session.step % t.checkpoint_every == 0 or session.step == t.steps:
                session.elapsed = last_elapsed + (time.perf_counter() - started)
                session.save()
            if session.stop_requested and session.step < t.steps:
                bar.close()
                if session.step % t.checkpoint_every != 0:
                    session.elapsed = last_elapsed + (time.perf_counter() - started)
                    session.save()
                session.log(f"widthwise: interrupted ({session.stop_requested}) at step {session.step}; checkpoint "
                            f"written; continue with `widthwise train --resume {session.run_dir}`")
                return "interrupted", EXIT_INTERRUPTED
    finally:
        bar.close()
    return "completed", EXIT_OK


def generate_sample(session: _Run) -> str:
    """A few lines sampled from the trained model, from ``train.sample_prompt`` (or end-of-text)."""
    t = session.config.train
    tok = session.data.tokenizer
    ids = tok.encode(t.sample_prompt).ids if t.sample_prompt else [session.data.eos_id]
    idx = torch.tensor([ids], device=session.runtime.device)
    gen = torch.Generator(device=session.runtime.device).manual_seed(t.seed)
    out = session.model.generate(idx, t.sample_tokens, generator=gen)
    return tok.decode(out[0].tolist()).replace("<|endoftext|>", "\n").strip()


__all__ = ["Result", "read_metrics", "read_run_config", "resume", "start", "unique_state_dict"]
