"""The sublayer gains' forward pass, as the training monitor runs it: with the head, and stopped before it.

:class:`~widthwise.diagnostics.monitor.TrainingDiagnostics` measures the gains with one no-grad forward over
``diagnostics.gain_sequences`` fixed sequences. From its second measurement on it stops that forward before the
head and takes the head's gain from ``X^T X`` and ``W^T W`` (where that is cheaper than the logits). This script
times, on a trained session's model with its effective weights built once (as inside a measurement), interleaved
in alternating order, medians:

- ``plain``: the model's forward alone, no hooks (what any gains measurement costs at least);
- ``full``: :func:`~widthwise.diagnostics.gains.sublayer_gains` with the head's logits;
- ``stopped``: the same, stopped before the head (``stop_at``), as the monitor runs it.

It also prints the largest relative difference between the two paths' gains.

    python benchmarks/gains_forward.py                       # demo model, width 128, 4 sequences of 128 tokens
    python benchmarks/gains_forward.py --width 256 --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import statistics

import torch
from torch.nn.utils import parametrize

from widthwise.app.bench.sessions import Setting, session, train_step
from widthwise.app.bench.timing import interleaved, load_average, machine
from widthwise.diagnostics.gains import gain_modules, sublayer_gains


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="demo")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--seq", type=int, default=128, help="tokens a sequence")
    parser.add_argument("--sequences", type=int, default=None, help="gain sequences (default: the config's)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    parser.add_argument("--steps", type=int, default=20, help="training steps before measuring")
    parser.add_argument("--rounds", type=int, default=40, help="interleaved rounds of the three variants")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    run = session(Setting(args.config, args.width, "eager_fp32", 8, args.seq, args.threads), args.set)
    for _ in range(args.steps):
        train_step(run)
    sequences = args.sequences or run.config.diagnostics.gain_sequences
    batch = torch.cat([x for x, _ in run.val])[:sequences]
    model, modules = run.model, gain_modules(run.model)
    order: list[str] = []
    sublayer_gains(model, batch, modules=modules, order=order)
    head = order[-1]

    def plain() -> None:
        model.eval()
        with torch.no_grad():
            model(batch)
        model.train()

    variants = {"plain": plain,
                "full": lambda: sublayer_gains(model, batch, modules=modules),
                "stopped": lambda: sublayer_gains(model, batch, modules=modules, stop_at=head)}
    before = load_average()
    with parametrize.cached():  # the effective weights built once, as inside a measurement
        full, stopped = variants["full"](), variants["stopped"]()
        times = interleaved(variants, args.rounds)
    result = {
        "width": args.width, "sequences": sequences, "tokens": batch.numel(), "head": head,
        "median_ms": {name: round(statistics.median(t) * 1e3, 3) for name, t in times.items()},
        "max_rel_difference": max(abs(stopped[k] / full[k] - 1) for k in full if math.isfinite(full[k])),
        "machine": machine(), "loadavg_before": before, "loadavg_after": load_average(),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
