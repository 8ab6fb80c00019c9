"""Cost of the in-training diagnostics: one measurement every `diagnostics.every` steps, against the steps.

A real trainer session (the demo's model, multipliers, plan, AdamW, data) in this one process: rounds of
`every` optimizer steps followed by one diagnostics measurement, as the trainer does. The overhead is
median(measurement) / (every x median(step)); the first (cold, unwarmed power iteration) measurement is
reported apart, and each component is timed on its own afterwards. Prints JSON with the load average.

    python benchmarks/diagnostics_overhead.py                  # the demo config, default cadence
    python benchmarks/diagnostics_overhead.py --config tiny --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from widthwise.diagnostics.equilibrium import equilibrium_report
from widthwise.diagnostics.gains import sublayer_gains
from widthwise.diagnostics.multiplier_stats import multiplier_stats, symmetry_drift
from widthwise.diagnostics.spectra import top_singular_values
from widthwise.train.config import load_config
from widthwise.train.trainer import _Run


def _median_s(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="demo")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of `every` steps + one measurement")
    parser.add_argument("--every", type=int, default=None, help="default: the config's diagnostics.every")
    parser.add_argument("--compile", action="store_true", help="compiled training steps (diagnostics stay eager)")
    args = parser.parse_args(argv)
    config = load_config(args.config, [*args.overrides, "train.dtype=float32", "train.progress=false",
                                       f"train.compile={str(args.compile).lower()}"])
    every = args.every or config.diagnostics.every or 50
    with tempfile.TemporaryDirectory() as tmp:
        session = _Run(config, Path(tmp) / "run", log=lambda msg: None)
        diag = session.diagnostics
        if diag is None:
            raise SystemExit("diagnostics.every is null in this config: nothing to measure")
        session.train_step()  # warm up (and compile, with --compile)
        cold_s = _median_s(lambda: diag.measure(session.step), 1)
        loadavg_before = os.getloadavg()
        steps, measures = [], []
        for _ in range(args.rounds):
            for _ in range(every):
                start = time.perf_counter()
                loss, _ = session.train_step()
                float(loss)
                steps.append(time.perf_counter() - start)
            start = time.perf_counter()
            diag.measure(session.step)
            measures.append(time.perf_counter() - start)
        model, opt, batch = session.model, session.built.optimizer, diag.batch
        components = {
            "top_singular_values_effective": _median_s(lambda: top_singular_values(model, which="effective"), 3),
            "top_singular_values_stored": _median_s(lambda: top_singular_values(model, which="stored"), 3),
            "equilibrium_report": _median_s(lambda: equilibrium_report(model, opt), 3),
            "sublayer_gains": _median_s(lambda: sublayer_gains(model, batch), 3) if batch is not None else None,
            "multiplier_stats_and_drift": _median_s(lambda: (multiplier_stats(model), symmetry_drift(model)), 3),
        }
    t = config.train
    step_s, measure_s = statistics.median(steps), statistics.median(measures)
    result = {
        "config": args.config, "width": config.model.width, "depth": config.model.depth,
        "tokens_per_step": t.batch_size * t.seq_len, "threads": session.runtime.threads,
        "compile": session.runtime.compile, "every": every, "rounds": args.rounds,
        "gain_sequences": None if batch is None else int(batch.shape[0]),
        "loadavg_before": loadavg_before, "loadavg_after": os.getloadavg(),
        "step_s_median": round(step_s, 5), "measure_s_median": round(measure_s, 5),
        "measure_s_cold": round(cold_s, 5),
        "overhead": round(measure_s / (every * step_s), 5),
        "components_s_median": {k: (round(v, 5) if v is not None else None) for k, v in components.items()},
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
