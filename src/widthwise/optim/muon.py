"""``BatchedMuon``: ``torch.optim.Muon`` with one batched Newton-Schulz per shape, in the dtype that is fast here.

Muon (Keller Jordan, "Muon: An optimizer for hidden layers in neural networks", 2024,
https://kellerjordan.github.io/posts/muon/; scaled to LLMs in Liu et al., "Muon is Scalable for LLM Training",
arXiv 2502.16982) orthogonalises each matrix's momentum with a quintic Newton-Schulz (NS) iteration.
``torch.optim.Muon`` runs it matrix by matrix in a Python loop, always in bf16. Here:

* matrices of a group with the same shape are stacked and go through the iteration together as batched
  matmuls (``torch.baddbmm``): one NS per shape instead of one per matrix, which saves kernel launches on a
  GPU; on a CPU stacks are cut to ``CPU_STACK_BYTES`` to stay in cache, and batching is neither faster nor
  slower there than one matrix at a time;
* the NS dtype is a choice, ``ns_dtype``: ``"auto"`` takes bf16 where bf16 matmuls are fast (CUDA, CPUs with
  AMX; :func:`widthwise.hardware.bf16_is_fast`) and fp32 elsewhere. A CPU without bf16 units emulates bf16:
  on a 2-core AVX2 EPYC, NS of 8 matrices 256x256 took 2.17 s in bf16 and 0.057 s in fp32, and a Muon step on
  the 28 hidden matrices of a 4-block LLaMA (1 thread) 560 ms with ``torch.optim.Muon`` and 33 ms here in fp32
  at width 128, 6.4 s and 0.23 s at width 256. fp32 evaluates the same iteration more precisely: its update
  differs from bf16's by about bf16's own rounding error (1-3%, relative).

With ``ns_dtype="bfloat16"`` the parameters are bitwise identical to ``torch.optim.Muon``'s on CPU (tested in
``tests/test_muon.py``): momentum, weight decay and the update are torch's per-parameter ops; a stack of tall
matrices is stacked as they are and transposed as a view (the layout of torch's ``grad.T``: stacking ``g.T``
contiguously rounded differently for ~0.5% of matrices); matrices with a side below ``MIN_BATCHED_SIDE``
(where CPU ``bmm`` takes a kernel that rounds bf16 differently from ``mm``) and stacks of one run as single
matrices. On CUDA, batched GEMM kernels may sum in another order than single ones: close, maybe not bitwise.

The state (``momentum_buffer`` per parameter) is torch's, so state dicts load across the two classes; each
group also records its resolved ``ns_dtype``, which a state dict restores on resume.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim._muon import DEFAULT_A, DEFAULT_B, DEFAULT_C, DEFAULT_NS_STEPS, EPS, _adjust_lr
from torch.optim.optimizer import ParamsT, _to_scalar

from .. import hardware

NS_DTYPES = ("auto", "bfloat16", "float32")
#: Stacks whose matrices have a shorter side than this run matrix by matrix: CPU ``bmm`` computes products with
#: fewer than 400 multiply-adds (side <= 7) in a naive kernel whose bf16 rounding differs from ``mm``'s, and
#: such matrices gain nothing from batching.
MIN_BATCHED_SIDE = 16
#: On a CPU, stacks are cut to at most this many bytes: NS of a stack that stays in cache ran ~10% faster than
#: of one that does not (LLaMA width 256, fp32, 1 thread: 228 ms a step with 1 MiB stacks, 252 ms unbounded);
#: batching itself gains nothing there (one matrix at a time: 228 ms). On CUDA a stack takes the whole shape.
CPU_STACK_BYTES = 1 << 20
#: torch dtypes of the resolved ``ns_dtype`` values.
NS_TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def resolve_ns_dtype(ns_dtype: str, device: torch.device) -> str:
    """``"bfloat16"`` or ``"float32"``: ``"auto"`` is bf16 where :func:`hardware.bf16_is_fast` on ``device``."""
    if ns_dtype not in NS_DTYPES:
        raise ValueError(f"unknown ns_dtype {ns_dtype!r}; expected one of {', '.join(NS_DTYPES)}")
    if ns_dtype == "auto":
        return "bfloat16" if hardware.bf16_is_fast(device) else "float32"
    return ns_dtype


def newton_schulz(x: Tensor, coefficients: Sequence[float], steps: int, eps: float) -> Tensor:
    """Muon's quintic Newton-Schulz iteration on a matrix ``(rows, cols)`` or a stack ``(B, rows, cols)``.

    Computed in ``x``'s dtype, with ``x`` left untouched; tall matrices (rows > cols) are iterated transposed,
    as torch does. Each matrix is first divided by its Frobenius norm (at least ``eps``), then ``steps`` times
    ``X <- a X + (b A + c A^2) X`` with ``A = X X^T`` and ``(a, b, c) = coefficients``.
    """
    if steps >= 100:
        raise ValueError("Number of steps must be less than 100 for computational efficiency")
    if len(coefficients) != 3:
        raise ValueError("Coefficients must be a tuple of exactly 3 values")
    a, b, c = coefficients
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    if x.dim() == 2:
        x = x / x.norm().clamp(min=eps)
        addmm = torch.addmm
    else:
        x = x / torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True).clamp(min=eps)
        addmm = torch.baddbmm
    for _ in range(steps):
        gram = x @ x.mT
        poly = addmm(gram, gram, gram, beta=b, alpha=c)
        x = addmm(x, poly, x, beta=a)
    return x.mT if tall else x


class BatchedMuon(torch.optim.Muon):
    """``torch.optim.Muon`` with batched Newton-Schulz and a choice of its dtype (module docstring).

    Takes ``torch.optim.Muon``'s arguments, plus ``ns_dtype``: ``"auto"`` (bf16 where
    :func:`widthwise.hardware.bf16_is_fast` on the first parameter's device, else fp32), ``"bfloat16"``
    (bitwise ``torch.optim.Muon`` on CPU) or ``"float32"``. The resolved value is stored in every param group
    as ``group["ns_dtype"]``; a group given its own ``ns_dtype`` keeps it. A ``torch.optim.Muon`` state dict
    (no ``ns_dtype``) loads with this optimizer's ``ns_dtype``.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = (DEFAULT_A, DEFAULT_B, DEFAULT_C),
        eps: float = EPS,
        ns_steps: int = DEFAULT_NS_STEPS,
        adjust_lr_fn: str | None = None,
        *,
        ns_dtype: str = "auto",
    ) -> None:
        if ns_dtype not in NS_DTYPES:
            raise ValueError(f"unknown ns_dtype {ns_dtype!r}; expected one of {', '.join(NS_DTYPES)}")
        super().__init__(params, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                         ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn)
        resolved = resolve_ns_dtype(ns_dtype, _first_device(self.param_groups[0]))
        self.defaults["ns_dtype"] = resolved
        for group in self.param_groups:
            group.setdefault("ns_dtype", resolved)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if "ns_dtype" in group:  # given with the group, or (after __init__) from the defaults
            group["ns_dtype"] = resolve_ns_dtype(group["ns_dtype"], _first_device(group))

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        default = self.defaults.get("ns_dtype", "auto")
        for group in self.param_groups:  # a torch.optim.Muon state dict has no ns_dtype
            group["ns_dtype"] = resolve_ns_dtype(group.get("ns_dtype", default), _first_device(group))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One optimization step: ``torch.optim.Muon``'s, bitwise on CPU with ``ns_dtype="bfloat16"``."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params: list[Tensor] = []
            grads: list[Tensor] = []
            bufs: list[Tensor] = []
            self._init_group(group, params, grads, bufs)  # torch's checks and momentum buffers
            if params:
                self._update(group, params, grads, bufs)
        return loss

    def _update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], bufs: list[Tensor]) -> None:
        if any(g.ndim != 2 for g in grads):
            raise ValueError("Param gradient must be a 2D matrix")
        lr = _to_scalar(group["lr"])
        momentum = group["momentum"]
        torch._foreach_lerp_(bufs, grads, 1 - momentum)
        updates = torch._foreach_lerp(grads, bufs, momentum) if group["nesterov"] else bufs
        dtype = NS_TORCH_DTYPES[group["ns_dtype"]]
        ns_args = (group["ns_coefficients"], group["ns_steps"], group["eps"])

        torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
        for stack in ns_stacks(params, dtype):
            if len(stack) == 1:
                ortho = [newton_schulz(updates[stack[0]].to(dtype), *ns_args)]
            else:
                ortho = list(newton_schulz(torch.stack([updates[i] for i in stack]).to(dtype), *ns_args).unbind(0))
            adjusted_lr = _adjust_lr(lr, group["adjust_lr_fn"], params[stack[0]].shape)
            torch._foreach_add_([params[i] for i in stack], ortho, alpha=-adjusted_lr)


def ns_stacks(params: list[Tensor], dtype: torch.dtype) -> list[list[int]]:
    """Indices of ``params`` that go through Newton-Schulz together: same device, dtype and shape; matrices
    with a side below ``MIN_BATCHED_SIDE`` alone; on a CPU at most ``CPU_STACK_BYTES`` (in ``dtype``) a stack."""
    same: dict[tuple, list[int]] = {}
    for i, p in enumerate(params):
        same.setdefault((p.device, p.dtype, p.shape), []).append(i)
    stacks = []
    for (device, _, shape), idx in same.items():
        size = len(idx)
        if min(shape) < MIN_BATCHED_SIDE:
            size = 1
        elif device.type == "cpu":
            size = max(1, CPU_STACK_BYTES // (shape.numel() * dtype.itemsize))
        stacks += [idx[j:j + size] for j in range(0, len(idx), size)]
    return stacks


def _first_device(group: dict[str, Any]) -> torch.device:
    params = group["params"]
    return params[0].device if params else torch.device("cpu")
