"""Which multiplier path a compiled model should trace: autograd's products or the hand-written backward.

:func:`widthwise.fused_multipliers.scaled_weight` takes the plain products ``V * (r c^T)`` under
``torch.compile`` and leaves inductor to fuse them; the alternative is the closed-form backward of BRIEF
section 2 (a :class:`torch.autograd.Function`, which dynamo traces too). ``benchmarks/multiplier_floor.py``
compares the two on the effective weights alone (``compiled`` against ``compiled_fused``); this script compares
them where it matters, in whole training steps of the trainer's own sessions, in one process, interleaved in
shuffled order, medians:

- ``none`` and ``none_aa``: two sessions without multipliers, built alike (``none_aa`` is the A/A control);
- ``products``: a ``row_col`` session as ``widthwise train`` builds it;
- ``fused``: the same session with every matrix's multipliers on the hand-written backward (embedding unchanged).

Each step is timed in two parts, the forward + backward and the update (clip, optimizer, schedule, zero grads),
so the multipliers' cost is also split between them. ``--mode eager_fp32`` runs the same comparison eagerly.

    python benchmarks/compiled_dispatch.py                 # demo model, width 128, compiled, 1,024 tokens a step
    python benchmarks/compiled_dispatch.py --width 256 --rounds 30
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from functools import partial

import torch

from widthwise.app.bench.figures import VARIANTS
from widthwise.app.bench.passes import multiplied_weights
from widthwise.app.bench.sessions import Setting, session
from widthwise.app.bench.timing import load_average, machine, timed
from widthwise.app.session import Session
from widthwise.app.setup import apply_update
from widthwise.fused_multipliers import scaled_weight
from widthwise.parametrizations import Multipliers


def _hand_written(module: Multipliers, weight: torch.Tensor) -> torch.Tensor:
    return scaled_weight(weight, module.scalar, module.row, module.col, module.out_axis, module.in_axis, fused=True)


def on_hand_written_backward(run: Session) -> int:
    """Every matrix layer of ``run``'s model takes the hand-written backward (before the first, traced, step);
    the number of layers changed."""
    matrices, _ = multiplied_weights(run.model)
    for _, module in matrices:
        module.forward = partial(_hand_written, module)
    return len(matrices)


def timed_step(run: Session) -> tuple[float, float]:
    """Seconds of one training step's forward + backward, and of its update (the bench's clock, GPU work included)."""
    device = run.runtime.device
    x, y = (t.to(device) for t in run.sampler.next_batch())

    def forward_backward() -> None:
        with run.runtime.autocast():
            loss = run.step_model(x, y)
        loss.backward()

    return timed(forward_backward, device), timed(lambda: apply_update(run.built, run.config), device)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="demo")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8, help="sequences a step")
    parser.add_argument("--seq", type=int, default=128, help="tokens a sequence")
    parser.add_argument("--mode", default="compile", choices=("compile", "eager_fp32"))
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    parser.add_argument("--rounds", type=int, default=40, help="interleaved rounds")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps a session (the compile among them)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)

    setting = Setting(args.config, args.width, args.mode, args.batch_size, args.seq, args.threads)
    runs = {name: session(setting, [*args.overrides, *VARIANTS[variant]])
            for name, variant in (("none", "none"), ("none_aa", "none"), ("products", "row_col"), ("fused", "row_col"))}
    changed = on_hand_written_backward(runs["fused"])
    warmup_s = {}
    for name, run in runs.items():
        start = time.perf_counter()
        for _ in range(args.warmup):
            timed_step(run)
        warmup_s[name] = round(time.perf_counter() - start, 2)
    load_before = load_average()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    order, shuffle = list(runs), random.Random(0)
    for _ in range(args.rounds):
        shuffle.shuffle(order)
        for name in order:
            times[name].append(timed_step(runs[name]))
    steps = {name: [a + b for a, b in t] for name, t in times.items()}
    ms = {name: {"step": 1e3 * statistics.median(steps[name]),
                 "forward_backward": 1e3 * statistics.median(a for a, _ in t),
                 "update": 1e3 * statistics.median(b for _, b in t)} for name, t in times.items()}
    none = ms["none"]["step"]
    result = {
        "config": args.config, "width": args.width, "mode": args.mode, "runtime": runs["none"].runtime.describe(),
        "tokens_per_step": args.batch_size * args.seq, "rounds": args.rounds, "hand_written_layers": changed,
        "median_ms": {name: {k: round(v, 3) for k, v in parts.items()} for name, parts in ms.items()},
        "ratio_to_none": {name: round(ms[name]["step"] / none, 4) for name in ("none_aa", "products", "fused")},
        "fused_over_products_paired": round(statistics.median(
            f / p for f, p in zip(steps["fused"], steps["products"], strict=True)), 4),
        "multipliers_ms": {part: round(ms["products"][part] - ms["none"][part], 3)
                           for part in ("forward_backward", "update")},
        "warmup_s": warmup_s, "machine": machine(), "load_average": [load_before, load_average()],
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
