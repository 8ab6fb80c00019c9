"""An experiment: the paper's merged weights, with the multipliers' gradients, the AdamW update of V, r and c and the
rebuild of W fused into one compiled function. How much of the multipliers' cost would that leave?

Today widthwise builds ``W = diag(r) V diag(c)`` in every forward and differentiates it (autograd or the fused
Function), then AdamW updates ``V`` and the 2 x 28 tiny vectors. In the merged variant of arXiv 2601.04890 the
forward uses a stored ``W`` as a plain weight; after the backward, ``G = dL/dW`` gives the closed forms of BRIEF
section 2 (``dV = r c^T * G``, ``dr = (G * V) c``, ``dc = (G * V)^T r``), AdamW moves ``V``, ``r`` and ``c``, and
``W`` is rebuilt. Here that whole update is one function compiled by inductor (``torch.compile``), which fuses the
passes of each weight into a few loops.

On the reference model's matrices (their shapes and values, with ``dL/dW`` fixed and the caches emptied before every
call), interleaved in a shuffled order, medians, in milliseconds:

- ``plain``: ``torch.optim.AdamW(fused=True)`` on the weights alone (a model without multipliers);
- ``plain_compiled``: the same AdamW, hand-written and compiled like ``merged`` (so that ``merged`` is not credited
  with a faster optimizer);
- ``today``: widthwise's path: effective weights built, their backward for the fixed ``dL/dW``, fused AdamW over
  ``V`` and over the vectors;
- ``merged``: the compiled merged update (``--no-compile``: the same function run eagerly).

It also checks that ``merged`` and ``today`` move ``V``, ``r`` and ``c`` alike from the same state (one step), and
that the rebuilt ``W`` is ``diag(r) V diag(c)``. widthwise does not train this way (it would change what the model,
its checkpoints and the optimizer hold); the figures say what such a change would buy.

    python benchmarks/merged_update.py                  # demo model, width 128 (the first call compiles, ~45 s)
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import torch

from widthwise.app.bench.passes import EVICT_MB, multiplied_weights
from widthwise.app.bench.sessions import Setting, session
from widthwise.app.bench.timing import load_average, machine
from widthwise.fused_multipliers import scaled_weight

LR, WD, MULT_LR, MULT_WD, B1, B2, EPS = 1e-3, 0.1, 2e-3, 0.002, 0.9, 0.95, 1e-8


def _adamw_(p: torch.Tensor, grad: torch.Tensor, m: torch.Tensor, v: torch.Tensor, lr: float, wd: float,
            bc1: torch.Tensor, bc2: torch.Tensor) -> None:
    """AdamW (decoupled weight decay), as ``torch.optim.AdamW`` computes it, in place."""
    p.mul_(1 - lr * wd)
    m.lerp_(grad, 1 - B1)
    v.mul_(B2).addcmul_(grad, grad, value=1 - B2)
    p.sub_(lr / bc1 * m / ((v / bc2).sqrt() + EPS))


def merged_update(vs, rs, cs, grads, ws, state, step) -> None:
    """One step of the merged variant: the closed-form gradients of ``V``, ``r``, ``c`` from ``dL/dW``, AdamW on
    each, and ``W = diag(r) V diag(c)`` rebuilt. ``state``: the six lists of first/second moments."""
    m_v, s_v, m_r, s_r, m_c, s_c = state
    step.add_(1)
    bc1, bc2 = 1 - B1**step, 1 - B2**step
    for i, (v, r, c, g) in enumerate(zip(vs, rs, cs, grads, strict=True)):
        gv = g * v
        grad_r, grad_c = (gv * c).sum(1), (gv * r[:, None]).sum(0)
        _adamw_(v, g * r[:, None] * c, m_v[i], s_v[i], LR, WD, bc1, bc2)
        _adamw_(r, grad_r, m_r[i], s_r[i], MULT_LR, MULT_WD, bc1, bc2)
        _adamw_(c, grad_c, m_c[i], s_c[i], MULT_LR, MULT_WD, bc1, bc2)
        ws[i].copy_(v * r[:, None] * c)


def plain_update(ws, grads, m, s, step) -> None:
    """The same AdamW on the weights alone."""
    step.add_(1)
    bc1, bc2 = 1 - B1**step, 1 - B2**step
    for i, (w, g) in enumerate(zip(ws, grads, strict=True)):
        _adamw_(w, g, m[i], s[i], LR, WD, bc1, bc2)


def _zeros(tensors):
    return [torch.zeros_like(t) for t in tensors]


def _today(vs, rs, cs):
    """Parameters and the fused AdamW widthwise uses (two groups), from copies of ``vs``, ``rs``, ``cs``."""
    params = [[torch.nn.Parameter(t.clone()) for t in ts] for ts in (vs, rs, cs)]
    optimizer = torch.optim.AdamW([{"params": params[0]},
                                   {"params": params[1] + params[2], "lr": MULT_LR, "weight_decay": MULT_WD}],
                                  lr=LR, weight_decay=WD, betas=(B1, B2), eps=EPS, fused=True)
    return params, optimizer


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="demo")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    parser.add_argument("--rounds", type=int, default=150, help="interleaved rounds")
    parser.add_argument("--evict-mb", type=int, default=EVICT_MB, help="MiB written before each call (0: warm)")
    parser.add_argument("--no-compile", action="store_true", help="run the merged update eagerly")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    run = session(Setting(args.config, args.width, "eager_fp32", 8, 128, args.threads),
                  [*args.overrides, "multipliers.kind=row_col"])
    matrices, _ = multiplied_weights(run.model)
    g = torch.Generator().manual_seed(0)
    vs = [v.detach().clone() for v, _ in matrices]
    rs = [m.row.detach() + 0.1 * torch.rand(m.row.shape, generator=g) for _, m in matrices]
    cs = [m.col.detach() + 0.1 * torch.rand(m.col.shape, generator=g) for _, m in matrices]
    grads = [1e-3 * torch.randn(v.shape, generator=g) for v in vs]
    merged_fn = merged_update if args.no_compile else torch.compile(merged_update, dynamic=False)
    plain_fn = plain_update if args.no_compile else torch.compile(plain_update, dynamic=False)

    # The same step from the same state, both ways.
    (tv, tr, tc), topt = _today(vs, rs, cs)
    torch.autograd.backward([scaled_weight(v, None, r, c) for v, r, c in zip(tv, tr, tc, strict=True)], grads)
    topt.step()
    mv, mr, mc = ([t.clone() for t in ts] for ts in (vs, rs, cs))
    mw = [v * r[:, None] * c for v, r, c in zip(mv, mr, mc, strict=True)]
    start = time.perf_counter()
    merged_fn(mv, mr, mc, grads, mw, [_zeros(t) for t in (mv, mv, mr, mr, mc, mc)], torch.zeros(()))
    compile_s = time.perf_counter() - start
    rel = max(float((a - b.detach()).abs().max() / b.detach().abs().max())
              for xs, ys in ((mv, tv), (mr, tr), (mc, tc)) for a, b in zip(xs, ys, strict=True))
    rebuilt = max(float((w - v * r[:, None] * c).abs().max() / w.abs().max())
                  for w, v, r, c in zip(mw, mv, mr, mc, strict=True))

    plain_params = [torch.nn.Parameter(v.clone()) for v in vs]
    plain_opt = torch.optim.AdamW(plain_params, lr=LR, weight_decay=WD, betas=(B1, B2), eps=EPS, fused=True)
    (bv, br, bc), bopt = _today(vs, rs, cs)
    pw, pm, ps, pstep = [v.clone() for v in vs], _zeros(vs), _zeros(vs), torch.zeros(())
    state, mstep = [_zeros(t) for t in (mv, mv, mr, mr, mc, mc)], torch.zeros(())

    def plain() -> None:
        for p, grad in zip(plain_params, grads, strict=True):
            p.grad = grad
        plain_opt.step()

    def today() -> None:
        bopt.zero_grad(set_to_none=True)
        torch.autograd.backward([scaled_weight(v, None, r, c) for v, r, c in zip(bv, br, bc, strict=True)], grads)
        bopt.step()

    variants = {"plain": plain, "plain_compiled": lambda: plain_fn(pw, grads, pm, ps, pstep), "today": today,
                "merged": lambda: merged_fn(mv, mr, mc, grads, mw, state, mstep)}
    evict = torch.empty(max(1, args.evict_mb * (1 << 20) // 4))
    for fn in variants.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    before = load_average()
    for _ in range(args.rounds):
        for name in random.sample(list(variants), len(variants)):
            if args.evict_mb:
                evict.fill_(1.0)
            start = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - start)
    ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    result = {
        "config": args.config, "width": args.width, "matrices": len(vs), "elements": sum(v.numel() for v in vs),
        "compiled": not args.no_compile, "first_call_s": round(compile_s, 2), "rounds": args.rounds,
        "median_ms": {name: round(v, 3) for name, v in ms.items()},
        "ms_above_plain": {name: round(ms[name] - ms["plain"], 3) for name in ("today", "merged")},
        "merged_above_plain_compiled_ms": round(ms["merged"] - ms["plain_compiled"], 3),
        "merged_vs_today_rel_diff": rel, "rebuilt_w_rel_diff": rebuilt,
        "machine": machine(), "loadavg_before": before, "loadavg_after": load_average(),
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
