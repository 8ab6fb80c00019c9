"""Several processes under ``torchrun``: the process group, wrapping (DDP, FSDP2), full tensors, rank 0's say.

``torchrun`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; :func:`process_group` opens the group (gloo on a
CPU, NCCL on CUDA) with ``train.dist_timeout_s`` on every collective, so a rank that stops answering fails the
job instead of hanging it. Roles, plan and multipliers are decided on the unwrapped model, by name, before
:func:`wrap`; checkpoints hold full tensors (:func:`full_state`, gathered on every rank, written by rank 0) and
are cut back into this world's shards on load (:func:`shard_like`), so a run resumes at any world size.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from .. import errors
from ..errors import ConfigError
from ..optim.combined import CombinedOptimizer

try:
    from torch.distributed.tensor import DTensor, distribute_tensor
except ImportError:  # pragma: no cover - torch builds without distributed support
    DTensor = None

T = TypeVar("T")

__all__ = ["Distributed", "full_state", "full_tensor", "process_group", "shard_like", "shard_optimizer_state"]


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job: ``train.parallel``, its rank and the world size (1: no group)."""

    parallel: str = "none"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        """Several processes, joined in a process group."""
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes the run directory's files and logs."""
        return self.rank == 0

    @property
    def fsdp(self) -> bool:
        return self.active and self.parallel == "fsdp"

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def agree(self, fn: Callable[[], T], others: Callable[[], T]) -> T:
        """``fn()`` on rank 0, then ``others()`` elsewhere; an error of rank 0's is raised on every rank."""
        if not self.active:
            return fn()
        failure: list[Any] = [None]
        result = None
        if self.main:
            try:
                result = fn()
            except errors.WidthwiseError as err:
                failure = [(type(err).__name__, str(err))]
        dist.broadcast_object_list(failure, src=0)
        if failure[0] is not None:
            name, message = failure[0]
            raise getattr(errors, name)(message)
        return result if self.main else others()  # type: ignore[return-value]

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` averaged over the ranks (itself with one process)."""
        if not self.active:
            return value
        out = value.detach().clone()
        dist.all_reduce(out)
        return out / self.world_size

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any rank."""
        if not self.active:
            return flag
        t = torch.tensor([int(bool(flag))], device=_collective_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment; ``(0, 1, 0)`` without it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


@contextlib.contextmanager
def process_group(parallel: str, timeout_s: float, device: str) -> Iterator[Distributed]:
    """The job's process group for the block (none with one process); :class:`ConfigError` on a mismatch."""
    _, size, local = world()
    if size > 1 and parallel == "none":
        raise ConfigError(f"train.parallel: none, but WORLD_SIZE={size} (torchrun): set train.parallel=ddp or fsdp")
    if size == 1:
        yield Distributed(parallel)
        return
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(local)
    opened = not dist.is_initialized()
    if opened:
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
    try:
        yield Distributed(parallel, dist.get_rank(), dist.get_world_size(), local)
    finally:
        if opened:
            dist.destroy_process_group()


def wrap(model: nn.Module, d: Distributed, device: torch.device) -> nn.Module:
    """The module that takes training steps: ``model`` (one process), DDP around it, or it FSDP2-sharded in place.

    FSDP2 shards each block of ``model.blocks`` and then the rest (embedding, final norm, head).
    """
    if not d.active:
        return model
    if d.parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    from torch.distributed.fsdp import fully_shard

    for block in getattr(model, "blocks", []):
        fully_shard(block)
    fully_shard(model)
    return model


@contextlib.contextmanager
def gradient_sync(module: nn.Module, d: Distributed, enabled: bool) -> Iterator[None]:
    """Backward passes in the block reduce gradients over ranks only if ``enabled`` (the last micro-step)."""
    if not d.active:
        yield
    elif d.parallel == "ddp":
        with contextlib.nullcontext() if enabled else module.no_sync():  # type: ignore[operator]
            yield
    else:
        module.set_requires_gradient_sync(enabled)  # type: ignore[operator]
        yield


def full_tensor(t: Any) -> Any:
    """The whole tensor of a DTensor (a collective: every rank calls it); anything else as it is."""
    return t.full_tensor() if DTensor is not None and isinstance(t, DTensor) else t


def full_state(obj: Any) -> Any:
    """``obj`` (nested dicts, lists, tuples) with every DTensor gathered whole, in a fixed order on every rank."""
    if isinstance(obj, dict):
        return {k: full_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(full_state(v) for v in obj)
    return full_tensor(obj)


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``full`` cut into this rank's shard of ``like`` (a DTensor), without communication; else ``full``."""
    if DTensor is None or not isinstance(like, DTensor):
        return full
    return distribute_tensor(full.to(like.device), like.device_mesh, like.placements, src_data_rank=None)


def shard_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer state dict of full tensors cut into the shards of ``optimizer``'s (sharded) parameters."""
    if isinstance(optimizer, CombinedOptimizer):
        saved = state.get("optimizers")
        if not isinstance(saved, dict) or set(saved) != set(optimizer.optimizers):
            return state  # load_state_dict explains what does not fit
        return {"optimizers": {n: _shard_one(o, saved[n]) for n, o in optimizer.optimizers.items()}}
    return _shard_one(optimizer, state)


def _shard_one(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> dict[str, Any]:
    params = [p for g in optimizer.param_groups for p in g["params"]]
    ids = [i for g in state.get("param_groups", []) for i in g["params"]]
    if len(ids) != len(params):
        return state
    by_id = dict(zip(ids, params, strict=True))
    sharded = {}
    for i, entry in state.get("state", {}).items():
        p = by_id.get(i)
        sharded[i] = {k: shard_like(v, p) if p is not None and isinstance(v, torch.Tensor) and v.shape == p.shape
                      else v for k, v in entry.items()}
    return {**state, "state": sharded}
