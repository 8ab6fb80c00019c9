"""What ``widthwise bench`` times: real trainer sessions of the reference model, and a plain PyTorch loop.

A :class:`Setting` is one (width, execution mode) point; :func:`session` builds the trainer's own
:class:`~widthwise.app.session.Session` for it (the data, model, plan, multipliers, optimizer, schedule, clipping
and autocast that ``widthwise train`` uses; no run directory), and :class:`PlainLoop` is the minimal hand-written
loop over the same model, batch shape and settings that a user would write without widthwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ...errors import ConfigError
from ...hardware import bf16_is_fast
from ..config import Config, apply_overrides, load_config
from ..runtime import resolve_device
from ..session import Session
from ..setup import at_width

#: Execution modes: eager fp32, and compiled with bf16 autocast where bf16 is fast (else compiled fp32).
MODES = ("eager_fp32", "compile")


@dataclass(frozen=True)
class Setting:
    """One benchmark point: the reference model at ``width`` in one execution mode."""

    config: str
    width: int
    mode: str
    batch_size: int
    seq_len: int
    threads: int | None
    device: str = "auto"

    def dtype(self) -> str:
        """The autocast dtype of the mode: bf16 for ``compile`` where this device's bf16 matmul is fast."""
        if self.mode == "eager_fp32":
            return "float32"
        try:
            device = resolve_device(self.device)
        except ValueError as err:
            raise ConfigError(f"--device: {err}") from None
        return "bfloat16" if bf16_is_fast(device) else "float32"

    def label(self) -> str:
        """``compile_bf16`` / ``compile_fp32`` / ``eager_fp32``: what actually ran."""
        if self.mode == "eager_fp32":
            return "eager_fp32"
        return f"compile_{'bf16' if self.dtype() == 'bfloat16' else 'fp32'}"


def bench_config(setting: Setting, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The setting's config: its base config at ``width`` (head dim kept), observed by nothing but the timer."""
    if setting.mode not in MODES:
        raise ValueError(f"unknown mode {setting.mode!r}; expected one of {', '.join(MODES)}")
    config = load_config(setting.config, [
        f"train.batch_size={setting.batch_size}", f"train.seq_len={setting.seq_len}",
        f"train.dtype={setting.dtype()}", f"train.compile={str(setting.mode == 'compile').lower()}",
        f"train.device={setting.device}", "train.progress=false", "diagnostics.every=null", "train.steps=100000",
        *([f"train.threads={setting.threads}"] if setting.threads else []), *overrides,
    ])
    config = at_width(config, setting.width, "--widths")
    base = config.scaling.base_width
    if base is not None and base > setting.width:  # a tiny width below the config's base: its own base
        config = apply_overrides(config, [f"scaling.base_width={setting.width}"])
    return config


def session(setting: Setting, overrides: list[str] | tuple[str, ...] = ()) -> Session:
    """The training session of ``setting``."""
    return Session(bench_config(setting, overrides))


def train_step(run: Session) -> float:
    """One step of ``widthwise train``'s loop: sample, forward, backward, clip, update, schedule, read the loss."""
    loss, _ = run.train_step()
    return float(loss)


class PlainLoop:
    """A minimal hand-written PyTorch training loop on the same model, batch shape and settings as ``run``.

    It trains ``run``'s own model (the same tensors: two models built alike differ by their place in memory,
    and an A/A comparison of two identical sessions measured 2% apart), with only plain PyTorch:
    ``torch.optim.AdamW`` over the same parameter groups (LR, WD) and the same implementation (fused where the
    trainer's is), ``torch.nn.utils.clip_grad_norm_``, a ``LambdaLR`` warmup + cosine, nanoGPT-style random
    windows from the token array, ``torch.compile`` and autocast as the run has them. Its optimizer state is
    its own. So the ratio of the two steps is the cost of the trainer's code, not of where a model lies.
    """

    def __init__(self, run: Session) -> None:
        config = run.config
        self.config, self.device, self.autocast = config, run.runtime.device, run.runtime.autocast
        self.model = run.model
        self.forward = torch.compile(self.model) if run.runtime.compile else self.model
        o, s, t = config.optim, config.schedule, config.train
        groups = [{"params": g["params"], "lr": g["initial_lr"], "weight_decay": g["weight_decay"]}
                  for g in run.optimizer.param_groups]  # before the schedule's factor, which LambdaLR applies
        implementation = {k: run.optimizer.defaults[k] for k in ("fused", "foreach") if run.optimizer.defaults.get(k)}
        self.optimizer = torch.optim.AdamW(groups, betas=tuple(o.betas), eps=o.eps, **implementation)

        def cosine(step: int) -> float:
            if step < s.warmup:
                return (step + 1) / s.warmup
            progress = min(1.0, (step - s.warmup) / max(1, t.steps - s.warmup))
            return s.min_ratio + (1 - s.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, cosine)
        self.tokens = torch.from_numpy(run.data.train.astype("int64"))
        self.clip = o.grad_clip if o.grad_clip is not None else math.inf
        self.batch_size, self.seq_len = t.batch_size, t.seq_len

    def get_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(len(self.tokens) - self.seq_len - 1, (self.batch_size,))
        x = torch.stack([self.tokens[i : i + self.seq_len] for i in starts])
        y = torch.stack([self.tokens[i + 1 : i + 1 + self.seq_len] for i in starts])
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def step(self) -> float:
        x, y = self.get_batch()
        with self.autocast():
            loss = self.forward(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()
