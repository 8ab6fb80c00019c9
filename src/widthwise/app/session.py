"""A training session: everything ``widthwise train`` steps, built from a :class:`Config`, with no run directory.

:class:`Session` holds the data, model, plan, optimizer, LR schedule, batch sampler and runtime of a config, and
takes training steps (:meth:`Session.train_step`) and evaluates (:meth:`Session.evaluate`) exactly as the trainer
does; :meth:`Session.state_dict` / :meth:`Session.load_state_dict` carry it across processes bit for bit (same
machine, threads and settings; compile off). The trainer, the bench and ``widthwise diagnose`` all use it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch

from ..errors import CheckpointError, ConfigError
from ..optim.build import muon_ns_dtype
from .config import Config
from .data import BatchSampler, TokenData, validation_batches
from .runtime import Runtime, resolve_runtime
from .setup import Built, apply_update, build, config_device, load_data, resolved_config

if TYPE_CHECKING:
    from torch import nn

    from ..planning import Plan

__all__ = ["Session", "unique_state_dict"]


def unique_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with each tensor once (safetensors refuses shared storage; tied weights)."""
    weights, seen = {}, set()
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            weights[name] = tensor
    return weights


class Session:
    """The model, optimizer, schedule, data and runtime of ``config``, at ``step`` after ``tokens`` tokens."""

    def __init__(self, config: Config) -> None:
        self.config = config
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
        self.step = 0
        self.tokens = 0

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.built.optimizer

    @property
    def scheduler(self) -> torch.optim.lr_scheduler.LambdaLR:
        return self.built.scheduler

    @property
    def plan(self) -> Plan:
        return self.built.plan

    def lr(self) -> float:
        """The base LR the schedule gave the step just taken (each group has its plan factor on top)."""
        return self.config.optim.lr * self.scheduler.lr_lambdas[0](self.step - 1)

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor | float]:
        """One step: sample, forward, backward, clip, update, schedule; the loss (not synced) and grad norm."""
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
        """Mean loss per token over the validation batches (``train.eval_tokens``)."""
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

    def sample(self, prompt: str | None, tokens: int, seed: int) -> str:
        """``tokens`` tokens sampled from the model after ``prompt`` (or end-of-text), decoded."""
        tok = self.data.tokenizer
        ids = tok.encode(prompt).ids if prompt else [self.data.eos_id]
        idx = torch.tensor([ids], device=self.runtime.device)
        gen = torch.Generator(device=self.runtime.device).manual_seed(seed)
        out = self.model.generate(idx, tokens, generator=gen)
        return tok.decode(out[0].tolist()).replace("<|endoftext|>", "\n").strip()

    def resolved(self) -> dict[str, Any]:
        """What the session resolved from the config's ``null``/``auto`` fields: a run's ``resolved:`` section."""
        extra = {"runtime": {**self.runtime.to_dict(), "muon_ns_dtype": muon_ns_dtype(self.optimizer)},
                 "data_fingerprint": self.data.fingerprint,
                 "train_tokens": len(self.data.train), "val_tokens": len(self.data.val),
                 "train_documents": self.data.train_documents, "val_documents": self.data.val_documents}
        return resolved_config(self.built, extra)

    # -- state ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything to continue exactly: weights (each tensor once), optimizer, schedule, RNG, sampler, counters.

        ``model``, ``optimizer``, ``scheduler`` and ``rng`` hold tensors (the live ones, as ``nn.Module.state_dict``
        gives them: copy to keep them past the next step); the rest is JSON.
        """
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {"step": self.step, "model": unique_state_dict(self.model), "optimizer": self.optimizer.state_dict(),
                "scheduler": {k: v for k, v in self.scheduler.state_dict().items() if k != "lr_lambdas"},
                "rng": rng, "sampler": self.sampler.state_dict(), "tokens": self.tokens, "world_size": 1,
                "data_fingerprint": self.data.fingerprint, "vocab_size": self.built.model_config.vocab_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (a :meth:`state_dict`; other keys are ignored).

        :class:`CheckpointError` when it does not fit: another world size, changed data, other weights or
        optimizer. The schedule keeps this session's ``train.steps``, so a longer run extends it.
        """
        where = f"checkpoint step {state['step']}"
        world = int(os.environ.get("WORLD_SIZE", 1))
        if state.get("world_size") != world:
            raise CheckpointError(f"{where}: written with world size {state.get('world_size')}, resumed with "
                                  f"{world}; resume with the same number of processes")
        if state.get("data_fingerprint") != self.data.fingerprint:
            raise CheckpointError(f"{where}: the training data changed since it was written (corpus, tokenizer or "
                                  "split differ)")
        missing, unexpected = self.model.load_state_dict(state["model"], strict=False)
        shared = set(self.model.state_dict()) - set(unique_state_dict(self.model))  # tied names, stored once
        bad = unexpected or sorted(set(missing) - shared)
        if bad:
            raise CheckpointError(f"{where}: weights do not fit the model ({bad[0]!r})")
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(f"{where}: optimizer state does not fit ({err})") from None
        total = self.scheduler.lr_lambdas[0].total
        self.scheduler.load_state_dict({**state["scheduler"], "lr_lambdas": [None]})
        self.scheduler.lr_lambdas[0].total = total  # a longer train.steps extends the schedule
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.sampler.load_state_dict(state["sampler"])
        self.step, self.tokens = state["step"], state["tokens"]
