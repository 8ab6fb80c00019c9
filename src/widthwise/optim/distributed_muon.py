"""``DistributedMuon``: Muon on FSDP2-sharded matrices, Newton-Schulz on whole matrices, the work spread over ranks.

Newton-Schulz (NS) on a row shard is not NS on the matrix, so a sharded Muon must see whole matrices. Here, as in
torchtitan's and microsoft/dion's distributed Muon (the idea, not their code): momentum, Nesterov and weight
decay are element-wise and run on each rank's shard; then the matrices of a parameter group go in buckets of one
matrix per rank. One ``all_to_all`` per bucket sends every rank's shard of matrix ``j`` to rank ``j``, which
assembles the whole momentum-updated gradient and runs NS on it; a second ``all_to_all`` sends each rank its rows
of every result, and each rank updates its own shard. So each rank orthogonalises ``1 / world`` of the matrices,
and a bucket costs two collectives, not two per matrix.

The update equals :class:`widthwise.optim.muon.BatchedMuon`'s on the whole matrices (tested on real gloo ranks,
fp32 and bf16 NS): the shards are FSDP2's ``Shard(0)`` chunks (``torch.chunk`` sizes, trailing shards short or
empty), padded for the collective and cut back exactly. Supported: 1-D device meshes with ``Shard(0)``
placements (FSDP2's ``fully_shard``); other placements are refused. The state (``momentum_buffer``, a DTensor
like the parameter) is torch's.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.tensor import DTensor, Shard
from torch.optim._muon import _adjust_lr
from torch.optim.optimizer import _to_scalar

from .muon import _TORCH_DTYPES, BatchedMuon, newton_schulz

__all__ = ["DistributedMuon", "supports"]


def supports(param: Tensor) -> bool:
    """Whether ``param`` is a DTensor this optimizer can train: a 1-D mesh, sharded by rows (FSDP2)."""
    return isinstance(param, DTensor) and param.device_mesh.ndim == 1 and tuple(param.placements) == (Shard(0),)


def _chunk_rows(rows: int, world: int) -> list[int]:
    """Rows of each rank's shard: ``torch.chunk`` sizes (FSDP2's), padded with empty shards to ``world``."""
    sizes = [len(c) for c in torch.empty(rows, device="meta").chunk(world)]
    return sizes + [0] * (world - len(sizes))


class DistributedMuon(BatchedMuon):
    """:class:`BatchedMuon` over FSDP2-sharded matrices (module docstring): the same arguments and state."""

    def __init__(self, params: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(params, *args, **kwargs)
        for group in self.param_groups:
            for p in group["params"]:
                if not supports(p):
                    where = f"placements {tuple(p.placements)} on a {p.device_mesh.ndim}-D mesh" \
                        if isinstance(p, DTensor) else "not a DTensor"
                    raise ValueError(f"DistributedMuon trains FSDP2 row-sharded matrices (Shard(0), 1-D mesh); got "
                                     f"a parameter of shape {tuple(p.shape)}: {where}")

    def _update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], bufs: list[Tensor]) -> None:
        if any(g.ndim != 2 for g in grads):
            raise ValueError("Param gradient must be a 2D matrix")
        lr = _to_scalar(group["lr"])
        momentum = group["momentum"]
        local = [p.to_local() for p in params]
        local_grads = [g.to_local() for g in grads]
        local_bufs = [b.to_local() for b in bufs]
        torch._foreach_lerp_(local_bufs, local_grads, 1 - momentum)
        updates = torch._foreach_lerp(local_grads, local_bufs, momentum) if group["nesterov"] else local_bufs
        torch._foreach_mul_(local, 1 - lr * group["weight_decay"])
        mesh = params[0].device_mesh
        pg, world, rank = mesh.get_group(), mesh.size(), mesh.get_local_rank()
        dtype = _TORCH_DTYPES[group["ns_dtype"]]
        ns_args = (group["ns_coefficients"], group["ns_steps"], group["eps"])
        for start in range(0, len(params), world):
            bucket = list(range(start, min(start + world, len(params))))
            shapes = [tuple(params[i].shape) for i in bucket]
            ortho = self._orthogonalise(bucket, shapes, updates, dtype, ns_args, pg, world, rank)
            for i, shape, rows in zip(bucket, shapes, ortho, strict=True):
                torch._foreach_add_([local[i]], [rows], alpha=-_adjust_lr(lr, group["adjust_lr_fn"], shape))

    @staticmethod
    def _orthogonalise(bucket: list[int], shapes: list[tuple[int, ...]], updates: list[Tensor], dtype: torch.dtype,
                       ns_args: tuple, pg: Any, world: int, rank: int) -> list[Tensor]:
        """This rank's rows of NS of each whole matrix of ``bucket``; rank ``j`` orthogonalises matrix ``j``."""
        pad = [-(-rows // world) * cols for rows, cols in shapes]  # elements of one padded shard per matrix
        splits = [_chunk_rows(rows, world) for rows, _ in shapes]
        device, kind = updates[bucket[0]].device, updates[bucket[0]].dtype
        send = torch.zeros(sum(pad), device=device, dtype=kind)
        offset = 0
        for j, i in enumerate(bucket):
            piece = updates[i].reshape(-1)
            send[offset:offset + piece.numel()] = piece
            offset += pad[j]
        mine = rank < len(bucket)
        received = torch.empty(world * pad[rank] if mine else 0, device=device, dtype=kind)
        in_splits = pad + [0] * (world - len(bucket))
        dist.all_to_all_single(received, send, [pad[rank] if mine else 0] * world, in_splits, group=pg)

        back = torch.empty(0, device=device, dtype=torch.float32)
        if mine:  # assemble matrix `rank`, orthogonalise it, cut it into every rank's rows
            cols = shapes[rank][1]
            parts = [received[s * pad[rank]: s * pad[rank] + n * cols].view(n, cols)
                     for s, n in enumerate(splits[rank])]
            result = newton_schulz(torch.cat(parts).to(dtype), *ns_args).float()
            back = torch.zeros(world * pad[rank], device=device, dtype=torch.float32)
            first = 0
            for s, n in enumerate(splits[rank]):
                back[s * pad[rank]: s * pad[rank] + n * cols] = result[first:first + n].reshape(-1)
                first += n
        returned = torch.empty(sum(pad), device=device, dtype=torch.float32)
        dist.all_to_all_single(returned, back, in_splits, [pad[rank] if mine else 0] * world, group=pg)
        out, offset = [], 0
        for j, (_, cols) in enumerate(shapes):
            n = splits[j][rank]
            out.append(returned[offset:offset + n * cols].view(n, cols).to(dtype))
            offset += pad[j]
        return out
