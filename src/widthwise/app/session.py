"""A training session: everything ``widthwise train`` steps, built from a :class:`Config`, with no run directory.

:class:`Session` holds the data, model, plan, optimizer, LR schedule, batch sampler and runtime of a config, and
takes training steps (:meth:`Session.train_step`) and evaluates (:meth:`Session.evaluate`) exactly as the trainer
does; :meth:`Session.state_dict` / :meth:`Session.load_state_dict` carry it across processes bit for bit (same
machine, threads and settings; compile off). The trainer, the bench and ``widthwise diagnose`` all use it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..optim.build import muon_ns_dtype
from .checkpoint import require_fields
from .config import Config, config_keys
from .data import BatchSampler, TokenData, validation_batches
from .distributed import Distributed, full_state, full_tensor, gradient_sync, shard_like, shard_optimizer_state, wrap
from .runtime import Runtime, resolve_runtime
from .setup import Built, apply_update, build, config_device, load_data, make_optimizer, resolved_config

if TYPE_CHECKING:
    from ..planning import Plan

__all__ = ["Session", "trained_config", "unique_state_dict"]

logger = logging.getLogger(__name__)


def unique_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with each tensor once (safetensors refuses shared storage; tied weights)."""
    weights, seen = {}, set()
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            weights[name] = tensor
    return weights


def trained_config(config: Config, built: Built) -> dict[str, Any]:
    """The fields of ``config`` that decide what a run computes (all but the ``resumable`` ones), by dotted key,
    with the values ``built`` resolved for the ``null`` ones (``model.vocab_size``, ...): what a checkpoint records,
    so that a resume or a diagnosis under another config is refused naming the field."""
    resumable = set(config_keys("resumable"))
    data = json.loads(json.dumps(config.to_dict()))  # JSON values, as state.json gives them back
    for section, values in resolved_config(built, {}).items():
        data[section].update(values)
    return {f"{s}.{k}": v for s, fields in data.items() for k, v in fields.items() if f"{s}.{k}" not in resumable}


def _check_config(where: str, recorded: dict[str, Any] | None, trained: dict[str, Any]) -> None:
    """:class:`CheckpointError` naming the first field of ``trained`` (:func:`trained_config`) whose value differs
    from the one the checkpoint recorded (a field it does not record, from a later widthwise, is not compared);
    no record: a warning."""
    if recorded is None:
        logger.warning(f"{where} records no config (written by an earlier widthwise): the config is not checked "
                       "against it")
        return
    differ = [(k, recorded[k], v) for k, v in trained.items()
              if k in recorded and json.dumps(recorded[k], sort_keys=True) != json.dumps(v, sort_keys=True)]
    if differ:
        key, old, new = differ[0]
        more = f" (and {len(differ) - 1} more fields)" if len(differ) > 1 else ""
        raise CheckpointError(f"{where} was trained with {key}={json.dumps(old)}, but the run's config says "
                              f"{key}={json.dumps(new)}{more}: config.yaml was edited after the run started; restore "
                              "it, or start a new run with the new value")


class Session:
    """The model, optimizer, schedule, data and runtime of ``config``, at ``step`` after ``tokens`` tokens.

    Under torchrun (``dist``, :mod:`widthwise.app.distributed`) each rank takes ``train.batch_size / world``
    sequences of every global batch in ``train.grad_accum`` micro-steps; roles, plan and multipliers are those
    of the unwrapped model, decided before it is wrapped (DDP) or sharded (FSDP2).
    """

    def __init__(self, config: Config, dist: Distributed | None = None) -> None:
        self.config = config
        self.dist = d = dist or Distributed(config.train.parallel)
        t = config.train
        if t.batch_size % (d.world_size * t.grad_accum):
            raise ConfigError(f"train.batch_size: {t.batch_size} does not split into {d.world_size} ranks x "
                              f"{t.grad_accum} micro-steps (train.grad_accum)")
        # Rank 0 tokenizes into the cache first (its errors stop every rank), then the others read it.
        self.data: TokenData = d.agree(lambda: load_data(config), lambda: load_data(config))
        vocab = config.model.vocab_size or self.data.vocab_size
        if vocab < self.data.vocab_size:
            raise ConfigError(f"model.vocab_size: {vocab} is smaller than the tokenizer's {self.data.vocab_size}")
        device = config_device(config)
        if d.active and device.type == "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
        self._replica: nn.Module | None = None  # FSDP2: rank 0's whole copy, for diagnostics
        self._unique: list[str] = []  # the state dict's names, each tensor once

        def shard(model: nn.Module) -> None:
            self._unique = list(unique_state_dict(model))
            if d.main:
                self._replica = copy.deepcopy(model)
            wrap(model, d, device)

        self.built: Built = build(config, vocab, device, wrap=shard if d.fsdp else None)
        self.model = self.built.model
        if not d.fsdp:
            self._unique = list(unique_state_dict(self.model))
        if self._replica is not None:
            self._replica_optimizer = make_optimizer(config, self._replica, self.built.plan, device)
        flops = self.model.flops_per_token(t.seq_len) * t.batch_size * t.seq_len
        self.runtime: Runtime = resolve_runtime(t.device, t.dtype, t.compile, t.threads, config.model.width,
                                                flops, t.steps, flush=t.flush_subnormals)
        if self.runtime.device.type == "cuda" and d.active:
            self.runtime = dataclasses.replace(self.runtime, device=device)
        self.wrapped = wrap(self.model, d, device) if d.active and not d.fsdp else self.model
        self.step_model = torch.compile(self.wrapped) if self.runtime.compile else self.wrapped
        # Evaluation runs without grad: compiled, that is a second graph to compile, worth it on a GPU only.
        one = self.runtime.device.type == "cuda" and not d.active
        self.eval_model = self.step_model if one else self.model
        self.sampler = BatchSampler(self.data.train, t.batch_size // d.world_size, t.seq_len, t.seed, d.rank,
                                    d.world_size)
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

    def train_step(self, reduce: bool = True) -> tuple[torch.Tensor, torch.Tensor | float]:
        """One step: sample, forward, backward, clip, update, schedule; the loss and the grad norm.

        The loss is the global batch's mean (averaged over micro-steps and ranks, a collective under torchrun);
        the grad norm is over the full gradients (FSDP2: gathered, a collective). ``reduce=False`` skips both
        collectives, for a step whose loss and norm nobody reads (the trainer's steps between log lines; every
        rank must pass the same value): this rank's loss, and the norm as the clipping returned it.
        """
        x, y = self.sampler.next_batch()
        device = self.runtime.device
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        micro = self.config.train.grad_accum
        if micro == 1:
            with gradient_sync(self.wrapped, self.dist, True), self.runtime.autocast():
                loss = self.step_model(x, y)
            loss.backward()
            total = loss.detach()
        else:
            total = torch.zeros((), device=device)
            for i, (xi, yi) in enumerate(zip(x.chunk(micro), y.chunk(micro), strict=True)):
                with gradient_sync(self.wrapped, self.dist, i == micro - 1):
                    with self.runtime.autocast():
                        loss = self.step_model(xi, yi)
                    (loss / micro).backward()
                total += loss.detach().float() / micro
        norm = apply_update(self.built, self.config)
        self.step += 1
        self.tokens += x.numel() * self.dist.world_size
        if not reduce:
            return total, norm
        return self.dist.mean(total), full_tensor(norm)

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

    def measured(self) -> tuple[nn.Module, torch.optim.Optimizer] | None:
        """The whole model and its optimizer for diagnostics, on rank 0 (``None`` elsewhere).

        Under FSDP2 rank 0 keeps a replica whose weights are gathered here (a collective: every rank calls it
        at the same steps) and an optimizer over it that never steps but carries the live LRs and WDs.
        """
        if not self.dist.fsdp:
            return (self.model, self.optimizer) if self.dist.main else None
        weights = {k: full_tensor(v) for k, v in self.model.state_dict().items()}
        if self._replica is None:
            return None
        self._replica.load_state_dict(weights)
        for mirror, live in zip(self._replica_optimizer.param_groups, self.optimizer.param_groups, strict=True):
            mirror["lr"], mirror["weight_decay"] = live["lr"], live["weight_decay"]
        return self._replica, self._replica_optimizer

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
        if self.dist.fsdp:  # whole tensors, gathered on every rank (a collective)
            weights = self.model.state_dict()
            model = {name: full_tensor(weights[name]) for name in self._unique}
            optimizer = full_state(self.optimizer.state_dict())
        else:
            model, optimizer = unique_state_dict(self.model), self.optimizer.state_dict()
        return {"step": self.step, "model": model, "optimizer": optimizer,
                "scheduler": {k: v for k, v in self.scheduler.state_dict().items() if k != "lr_lambdas"},
                "rng": rng, "sampler": self.sampler.state_dict(), "tokens": self.tokens,
                "world_size": self.dist.world_size, "config": trained_config(self.config, self.built),
                "data_fingerprint": self.data.fingerprint, "vocab_size": self.built.model_config.vocab_size}

    def check_config(self, state: dict[str, Any]) -> None:
        """:class:`CheckpointError` naming the first field that decides what the run computes (:func:`trained_config`)
        whose value differs from the one the checkpoint ``state`` recorded: a resume continues the run it continues.
        A checkpoint of an earlier widthwise records none: a warning (its weights still have to fit)."""
        _check_config(f"checkpoint step {state['step']}", state.get("config"), trained_config(self.config, self.built))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (a :meth:`state_dict`; other keys are ignored).

        :class:`CheckpointError` when it does not fit: changed data, other weights or optimizer (a resume checks
        the config first, :meth:`check_config`). The schedule
        keeps this session's ``train.steps``, so a longer run extends it. The state holds whole tensors, so it
        loads at any world size (the global batch is the same; sums over ranks round differently).
        """
        where = f"checkpoint step {state['step']}"
        require_fields(state, {"sampler": dict, "tokens": int}, f"{where} (state.json)")
        require_fields(state["rng"], {"torch": torch.Tensor}, f"{where} (optimizer.pt, RNG state)")
        written = state.get("world_size", 1)
        if written != self.dist.world_size:
            logger.info(f"{where}: written by {written} processes, resumed by {self.dist.world_size}; the losses "
                        "continue, up to float rounding of the sums over ranks")
        if state.get("data_fingerprint") != self.data.fingerprint:
            raise CheckpointError(f"{where}: the training data changed since it was written (corpus, tokenizer or "
                                  "split differ)")
        weights = state["model"]
        if self.dist.fsdp:
            live = self.model.state_dict()
            weights = {k: shard_like(v, live[k]) if k in live else v for k, v in weights.items()}
        try:
            missing, unexpected = self.model.load_state_dict(weights, strict=False)
        except RuntimeError as err:  # a tensor of another shape (a checkpoint that records no config)
            detail = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err))
            raise CheckpointError(f"{where}: weights do not fit the model ({detail})") from None
        shared = set(self.model.state_dict()) - set(self._unique)  # tied names, stored once
        bad = unexpected or sorted(set(missing) - shared)
        if bad:
            raise CheckpointError(f"{where}: weights do not fit the model ({bad[0]!r})")
        try:
            optimizer = state["optimizer"]
            if self.dist.fsdp:
                optimizer = shard_optimizer_state(self.optimizer, optimizer)
            self.optimizer.load_state_dict(optimizer)
        except (ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(f"{where}: optimizer state does not fit ({err})") from None
        total = self.scheduler.lr_lambdas[0].total
        self.scheduler.load_state_dict({**state["scheduler"], "lr_lambdas": [None]})
        self.scheduler.lr_lambdas[0].total = total  # a longer train.steps extends the schedule
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        try:
            self.sampler.load_state_dict(state["sampler"])
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{where}: the sampler state does not fit ({type(err).__name__}: {err})") from None
        self.step, self.tokens = state["step"], state["tokens"]
