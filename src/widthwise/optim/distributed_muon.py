"""``DistributedMuon``: Muon on FSDP2-sharded matrices, Newton-Schulz on whole matrices, the work spread over ranks.

Newton-Schulz (NS) on a row shard is not NS on the matrix, so a sharded Muon must see whole matrices. Here, as in
microsoft/dion's Muon (also in torchtitan's experiments) and Essential AI's "layer sharding" (two all-to-alls
instead of all-gathers; the idea, not their code): momentum, Nesterov and weight
decay are element-wise and run on each rank's shard; then the matrices of a parameter group go in buckets (up to
:data:`BUCKET_ELEMENTS`), matrix ``j`` of a bucket owned by rank ``j % world``. One ``all_to_all`` per bucket sends
every rank's shards to the owners, which assemble the whole momentum-updated gradients and run NS on them
(batched by shape); a second ``all_to_all`` sends each rank its rows of every result, and each rank updates its
own shard. So each rank orthogonalises ``1 / world`` of the matrices, and a bucket costs two collectives, not two
per matrix.

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

from .muon import NS_TORCH_DTYPES, BatchedMuon, newton_schulz, ns_stacks

__all__ = ["BUCKET_ELEMENTS", "DistributedMuon", "supports"]

#: A bucket (two collectives) holds consecutive matrices of a parameter group up to this many elements in all.
BUCKET_ELEMENTS = 1 << 26


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
        dtype = NS_TORCH_DTYPES[group["ns_dtype"]]
        ns_args = (group["ns_coefficients"], group["ns_steps"], group["eps"])
        for bucket in _buckets([tuple(p.shape) for p in params]):
            shapes = [tuple(params[i].shape) for i in bucket]
            ortho = _orthogonalise([updates[i] for i in bucket], shapes, dtype, ns_args, pg, world, rank)
            for i, shape, rows in zip(bucket, shapes, ortho, strict=True):
                torch._foreach_add_([local[i]], [rows], alpha=-_adjust_lr(lr, group["adjust_lr_fn"], shape))


def _buckets(shapes: list[tuple[int, ...]]) -> list[list[int]]:
    """Consecutive matrices, at most :data:`BUCKET_ELEMENTS` (whole) a bucket, one matrix at least."""
    buckets: list[list[int]] = [[]]
    size = 0
    for i, (rows, cols) in enumerate(shapes):
        if buckets[-1] and size + rows * cols > BUCKET_ELEMENTS:
            buckets.append([])
            size = 0
        buckets[-1].append(i)
        size += rows * cols
    return buckets


def _orthogonalise(shards: list[Tensor], shapes: list[tuple[int, ...]], dtype: torch.dtype, ns_args: tuple,
                   pg: Any, world: int, rank: int) -> list[Tensor]:
    """This rank's rows of NS of each whole matrix of a bucket, from this rank's ``shards`` of them.

    Matrix ``j`` is orthogonalised on rank ``j % world``: one ``all_to_all`` brings it every rank's shard, NS
    runs on the whole matrices there (stacked by shape, as :class:`BatchedMuon` stacks them), and one
    ``all_to_all`` sends each rank its rows. Shards are padded to ``ceil(rows / world)`` rows in transit.
    """
    n = len(shapes)
    owner = [j % world for j in range(n)]
    pad = [-(-rows // world) * cols for rows, cols in shapes]
    splits = [_chunk_rows(rows, world) for rows, _ in shapes]
    order = sorted(range(n), key=lambda j: (owner[j], j))  # the send buffer: by owner, then by position
    offsets, total = {}, 0
    for j in order:
        offsets[j], total = total, total + pad[j]
    per_owner = [sum(pad[j] for j in range(n) if owner[j] == d) for d in range(world)]
    device, kind = shards[0].device, shards[0].dtype
    send = torch.zeros(total, device=device, dtype=kind)
    for j, shard in enumerate(shards):
        send[offsets[j]:offsets[j] + shard.numel()] = shard.reshape(-1)
    mine = [j for j in order if owner[j] == rank]
    size = per_owner[rank]  # what every rank sends here: its shards of this rank's matrices
    received = torch.empty(world * size, device=device, dtype=kind)
    dist.all_to_all_single(received, send, [size] * world, per_owner, group=pg)

    local = {j: offsets[j] - offsets[mine[0]] for j in mine} if mine else {}
    whole = []
    for j in mine:
        cols = shapes[j][1]
        whole.append(torch.cat([received[s * size + local[j]: s * size + local[j] + rows * cols].view(rows, cols)
                                for s, rows in enumerate(splits[j])]).to(dtype))
    results: list[Tensor] = list(whole)  # replaced by their NS
    for stack in ns_stacks(whole, dtype):
        if len(stack) == 1:
            results[stack[0]] = newton_schulz(whole[stack[0]], *ns_args)
        else:
            for k, o in zip(stack, newton_schulz(torch.stack([whole[k] for k in stack]), *ns_args).unbind(0),
                            strict=True):
                results[k] = o
    back = torch.zeros(world * size, device=device, dtype=torch.float32)
    for k, j in enumerate(mine):
        cols, first = shapes[j][1], 0
        for s, rows in enumerate(splits[j]):
            back[s * size + local[j]: s * size + local[j] + rows * cols] = results[k][first:first + rows].reshape(-1)
            first += rows
    returned = torch.empty(total, device=device, dtype=torch.float32)
    dist.all_to_all_single(returned, back, per_owner, [size] * world, group=pg)
    return [returned[offsets[j]:offsets[j] + splits[j][rank] * cols].view(splits[j][rank], cols).to(dtype)
            for j, (_, cols) in enumerate(shapes)]
