"""An experiment: the paper's merged weights in a real training step. What would the multipliers cost?

``benchmarks/merged_update.py`` timed the merged variant's update alone, on fixed gradients. This script runs whole
training steps of the reference model (``widthwise train``'s session: data, forward, backward, clip, AdamW,
schedule), interleaved in one process, medians:

- ``none``: a session without multipliers (and ``none_aa``, a second one built alike: the A/A control);
- ``row_col``: today's ``row_col`` session (effective weights built in the forward, autograd's backward through them);
- ``merged``: a ``row_col`` session whose 28 matrix layers use a stored ``W = diag(r) V diag(c)`` as a plain weight
  (the embedding keeps widthwise's looked-up-rows path). After the backward, ``G = dL/dW`` goes through two
  functions compiled by inductor over all the matrices at once:

  1. ``dL/dr = (G * V) c``, ``dL/dc = (G * V)^T r`` (BRIEF section 2) and ``||r c^T * G||^2``, the matrices' share
     of the clip's total norm (the multipliers stay out of it, as in the trainer);
  2. with the clip's factor, AdamW on ``V`` (gradient ``r c^T * G``), ``r`` and ``c``, at the learning rates and
     weight decays of the session's own optimizer groups (the plan's), and ``W`` rebuilt in place.

  Every other parameter (embedding, gains) takes the session's own clip and fused AdamW.

Before timing, one step of ``merged`` and one of ``row_col`` run from the same state on the same batch, and the
script reports how far apart ``V``, ``r`` and ``c`` land, over how far the step moved them (float32: the last bits
differ, as any two orders of the same sums do). widthwise does not train this way; the figures say what such a
change would buy.

    python benchmarks/merged_step.py --width 128      # the first merged step compiles (~20-60 s)
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time

import torch
from torch import nn

from widthwise.app.bench.figures import VARIANTS
from widthwise.app.bench.passes import multiplied_weights
from widthwise.app.bench.sessions import Setting, session, train_step
from widthwise.app.bench.timing import load_average, machine
from widthwise.clipping import clip_groups


def phase_one(gs, vs, rs, cs):
    """Per matrix: ``||r c^T * G||^2``, ``dL/dr``, ``dL/dc``."""
    squares, grad_rs, grad_cs = [], [], []
    for g, v, r, c in zip(gs, vs, rs, cs, strict=True):
        gv = g * v
        grad_rs.append((gv * c).sum(1))
        grad_cs.append((gv * r[:, None]).sum(0))
        squares.append((g * (r[:, None] * c)).square().sum())
    return squares, grad_rs, grad_cs


def _adamw_(p, grad, m, s, lr, wd, b1, b2, eps, bc1, bc2):
    p.mul_(1 - lr * wd)
    m.lerp_(grad, 1 - b1)
    s.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    p.sub_(lr / bc1 * m / ((s / bc2).sqrt() + eps))


def phase_two(gs, vs, rs, cs, ws, grad_rs, grad_cs, state, step, coef, hyper):
    """AdamW on every ``V`` (gradient ``coef * r c^T * G``), ``r``, ``c``; ``W`` rebuilt."""
    m_v, s_v, m_r, s_r, m_c, s_c = state
    lr_v, wd_v, lr_m, wd_m, b1, b2, eps = hyper
    step.add_(1)
    bc1, bc2 = 1 - b1**step, 1 - b2**step
    for i, (g, v, r, c, w) in enumerate(zip(gs, vs, rs, cs, ws, strict=True)):
        _adamw_(v, coef * g * (r[:, None] * c), m_v[i], s_v[i], lr_v[i], wd_v[i], b1, b2, eps, bc1, bc2)
        _adamw_(r, grad_rs[i], m_r[i], s_r[i], lr_m[i], wd_m[i], b1, b2, eps, bc1, bc2)
        _adamw_(c, grad_cs[i], m_c[i], s_c[i], lr_m[i], wd_m[i], b1, b2, eps, bc1, bc2)
        w.copy_(v * (r[:, None] * c))


class Merged:
    """A ``row_col`` session trained with merged weights on its matrices (see the module docstring)."""

    def __init__(self, run, compiled: bool = True) -> None:
        self.run = run
        matrices, _ = multiplied_weights(run.model)
        self.vs = [v for v, _ in matrices]
        self.rs = [m.row for _, m in matrices]
        self.cs = [m.col for _, m in matrices]
        with torch.no_grad():
            self.ws = [nn.Parameter(v * (r[:, None] * c)) for v, r, c in zip(self.vs, self.rs, self.cs, strict=True)]
        for (_, mult), w in zip(matrices, self.ws, strict=True):
            mult.forward = lambda weight, w=w: w  # the stored W, a plain weight to autograd
        merged = {id(p) for p in (*self.vs, *self.rs, *self.cs)}
        groups = clip_groups(run.model)
        self.clip_params = [p for p in groups.params if id(p) not in merged]
        self.group_of = {id(p): g for g in run.optimizer.param_groups for p in g["params"]}
        self.betas, self.eps = run.optimizer.defaults["betas"], run.optimizer.defaults["eps"]
        self.state = [[torch.zeros_like(t) for t in ts]
                      for ts in (self.vs, self.vs, self.rs, self.rs, self.cs, self.cs)]
        self.step_count = torch.zeros(())
        self.clip = run.config.optim.grad_clip
        self.p1 = torch.compile(phase_one, dynamic=False) if compiled else phase_one
        self.p2 = torch.compile(phase_two, dynamic=False) if compiled else phase_two

    def hyper(self):
        """The groups' learning rates and weight decays as tensors (floats would recompile at every LR change)."""
        def values(params, key):
            return torch.tensor([self.group_of[id(p)][key] for p in params], dtype=torch.float64)
        return (values(self.vs, "lr"), values(self.vs, "weight_decay"), values(self.rs, "lr"),
                values(self.rs, "weight_decay"), self.betas[0], self.betas[1], self.eps)

    @torch.no_grad()
    def update(self) -> torch.Tensor:
        gs = [w.grad for w in self.ws]
        vs, rs, cs = ([t.detach() for t in ts] for ts in (self.vs, self.rs, self.cs))
        squares, grad_rs, grad_cs = self.p1(gs, vs, rs, cs)
        others = [p.grad for p in self.clip_params if p.grad is not None]
        total = torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(torch.stack(torch._foreach_norm(others))), torch.stack(squares).sum().sqrt()]))
        coef = torch.clamp(self.clip / (total + 1e-6), max=1.0) if self.clip is not None else torch.ones(())
        torch._foreach_mul_(others, coef)
        self.run.optimizer.step()  # everything but the merged matrices (their V, r, c have no gradient)
        self.p2(gs, vs, rs, cs, [w.detach() for w in self.ws], grad_rs, grad_cs, self.state, self.step_count, coef,
                self.hyper())
        return total

    def train_step(self) -> float:
        run = self.run
        x, y = run.sampler.next_batch()
        with run.runtime.autocast():
            loss = run.model(x, y)
        loss.backward()
        self.update()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        for w in self.ws:
            w.grad = None
        return float(loss.detach())


def same_state_check(setting: Setting, compiled: bool, overrides: list[str]) -> tuple[dict[str, float], float]:
    """One step of today's path and one of the merged path, from the same state on the same batch: for ``V``, ``r``
    and ``c``, the largest gap between the two results over the largest move the step made (0: the same update);
    and the seconds of the first merged step (with its compilation)."""
    a, b = (session(setting, [*overrides, *VARIANTS["row_col"]]) for _ in range(2))
    b.model.load_state_dict(a.model.state_dict())
    before = _parts(a.model)
    batch = a.sampler.next_batch()
    a.sampler.next_batch = b.sampler.next_batch = lambda: batch
    train_step(a)
    merged = Merged(b, compiled)
    start = time.perf_counter()
    merged.train_step()
    first_s = time.perf_counter() - start  # with the compilation
    gaps: dict[str, float] = {}
    after_a, after_b = _parts(a.model), _parts(b.model)
    for name in ("V", "r", "c"):
        move = max(float((x - x0).abs().max()) for x, x0 in zip(after_a[name], before[name], strict=True))
        gap = max(float((x - y).abs().max()) for x, y in zip(after_a[name], after_b[name], strict=True))
        gaps[name] = gap / move
    gaps["W_rebuilt"] = max(float((w - v * (r[:, None] * c)).abs().max() / w.abs().max())
                            for w, v, r, c in zip([w.detach() for w in merged.ws], *(after_b[k] for k in "Vrc"),
                                                  strict=True))
    return gaps, first_s


def _parts(model: nn.Module) -> dict[str, list[torch.Tensor]]:
    matrices, _ = multiplied_weights(model)
    return {"V": [v.detach().clone() for v, _ in matrices], "r": [m.row.detach().clone() for _, m in matrices],
            "c": [m.col.detach().clone() for _, m in matrices]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="demo")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    parser.add_argument("--rounds", type=int, default=40, help="interleaved rounds")
    parser.add_argument("--no-compile", action="store_true", help="run the merged update eagerly")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    setting = Setting(args.config, args.width, "eager_fp32", args.batch_size, 128, args.threads)
    compiled = not args.no_compile
    gaps, first_merged_s = same_state_check(setting, compiled, args.overrides)
    runs = {name: session(setting, [*args.overrides, *VARIANTS[kind]])
            for name, kind in (("none", "none"), ("none_aa", "none"), ("row_col", "row_col"))}
    merged = Merged(session(setting, [*args.overrides, *VARIANTS["row_col"]]), compiled)
    steps = {name: (lambda r=run: train_step(r)) for name, run in runs.items()} | {"merged": merged.train_step}
    start = time.perf_counter()
    for fn in steps.values():
        fn()
    first_s = time.perf_counter() - start
    for fn in steps.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    before = load_average()
    for _ in range(args.rounds):
        for name in random.sample(list(steps), len(steps)):
            t0 = time.perf_counter()
            loss = steps[name]()
            times[name].append(time.perf_counter() - t0)
            assert math.isfinite(loss), name
    ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    result = {
        "config": args.config, "width": args.width, "tokens_per_step": args.batch_size * 128, "compiled": compiled,
        "rounds": args.rounds, "first_merged_step_s": round(first_merged_s, 1),
        "first_steps_s": round(first_s, 1), "median_ms": {k: round(v, 2) for k, v in ms.items()},
        "ratio_to_none": {k: round(v / ms["none"], 4) for k, v in ms.items()},
        "same_state_gaps": gaps, "machine": machine(), "loadavg_before": before, "loadavg_after": load_average(),
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
