"""The learnable multipliers' own forward + backward, apart from the matrix products, and how low it can go.

``widthwise bench`` times whole training steps with and without multipliers; on a shared machine that ratio
moves by a few percent between runs. This script times only what the multipliers add: the effective weights
``diag(r) V diag(c)`` of the reference model's matrices (its own shapes and values, from a ``row_col``
session) and their backward for a given ``dL/dW``, in one autograd call, with the caches emptied before each
call (a training step's matrix products evict the weights, so the real passes start cold); see
:mod:`widthwise.app.bench.passes`, which ``widthwise bench`` runs for its default path. Side by side,
interleaved, medians:

- ``widthwise``: the default dispatch (:func:`widthwise.fused_multipliers.scaled_weight`);
- ``products``: the plain element-wise products, differentiated by autograd, for every weight;
- ``fused``: the hand-written closed-form backward for every weight;
- ``compiled``: the products through ``torch.compile`` (inductor fuses each weight's passes into vectorised,
  multi-threaded loops): the cheapest element-wise code we can get for this work, so the floor; what a compiled
  model runs (:func:`~widthwise.fused_multipliers.scaled_weight` takes the products under compile);
- ``compiled_fused``: the hand-written closed-form backward through ``torch.compile``, the alternative a compiled
  model could run instead;
- ``leaf``: the weights used as they are, as a model with the multipliers folded uses them (only the
  gradient's accumulation): what the others are measured against.

The input embedding's looked-up rows (:func:`~widthwise.fused_multipliers.scaled_embedding`) against a plain
lookup (``embedding``, eager; with compile also ``embedding_compiled``, the plain row-wise products a compiled
model runs, ``embedding_compiled_fused``, the hand-written backward compiled, and ``embedding_compiled_leaf``,
the plain lookup compiled, which the compiled paths are read against: ``compiled_embedding_cost``), and a full
training step of the session, complete the picture: each path's cost above ``leaf`` is also given as a share of
the step.

    python benchmarks/multiplier_floor.py                       # demo model, width 128, 1,024 tokens a step
    python benchmarks/multiplier_floor.py --width 256 --threads 1 --no-compile
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics

import torch

from widthwise.app.bench.figures import VARIANTS
from widthwise.app.bench.passes import EVICT_MB, isolated_passes, matrix_paths, multiplied_weights
from widthwise.app.bench.sessions import Setting, session, train_step
from widthwise.app.bench.timing import load_average, timed
from widthwise.fused_multipliers import scaled_embedding


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="demo")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8, help="sequences a step")
    parser.add_argument("--seq", type=int, default=128, help="tokens a sequence")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    parser.add_argument("--rounds", type=int, default=150, help="interleaved rounds of the multiplier paths")
    parser.add_argument("--steps", type=int, default=20, help="training steps timed for the step's length")
    parser.add_argument("--evict-mb", type=int, default=EVICT_MB, help="MiB written before each call (0: warm)")
    parser.add_argument("--no-compile", action="store_true", help="leave out the compiled floor")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)

    run = session(Setting(args.config, args.width, "eager_fp32", args.batch, args.seq, args.threads),
                  [*args.overrides, *VARIANTS["row_col"]])
    extra, extra_embedding = {}, {}
    if not args.no_compile:  # inductor fuses each weight's products into vectorised, multi-threaded loops
        paths = matrix_paths(multiplied_weights(run.model)[0])
        extra["compiled"] = torch.compile(paths["products"], dynamic=False)
        extra["compiled_fused"] = torch.compile(paths["fused"], dynamic=False)
        for name, fused in (("embedding_compiled", None), ("embedding_compiled_fused", True)):
            lookup = torch.compile(lambda ids, table, row, col, fused=fused:
                                   scaled_embedding(ids, table, row, col, fused=fused), dynamic=False)
            extra_embedding[name] = lambda ids, table, mult, f=lookup: f(ids, table, mult.row, mult.col)
        plain_lookup = torch.compile(torch.nn.functional.embedding, dynamic=False)
        extra_embedding["embedding_compiled_leaf"] = lambda ids, table, mult: plain_lookup(ids, table)
    load_before = load_average()
    passes = isolated_passes(run.model, run.sampler.next_batch()[0], args.rounds,
                             paths=("widthwise", "products", "fused"), extra=extra, evict_mb=args.evict_mb,
                             extra_embedding=extra_embedding)
    for _ in range(2):
        train_step(run)
    step_ms = 1e3 * statistics.median(timed(lambda: train_step(run)) for _ in range(args.steps))
    if extra_embedding:  # the compiled lookups against the compiled plain lookup, not eager's
        leaf_ms = passes["median_ms"]["embedding_compiled_leaf"]
        passes["compiled_embedding_cost"] = {name: round(passes["median_ms"][name] - leaf_ms, 4)
                                             for name in ("embedding_compiled", "embedding_compiled_fused")}
    result = {
        "config": args.config, "width": args.width, "tokens_per_step": args.batch * args.seq,
        "threads": torch.get_num_threads(), **passes, "step_ms": round(step_ms, 3),
        "share_of_step": {name: round(ms / step_ms, 5) for name, ms in passes["ms_above_leaf"].items()},
        "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "loadavg_before": load_before, "loadavg_after": load_average(),
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
