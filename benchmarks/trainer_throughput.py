"""Tokens/s of `widthwise train`'s own step at a config's size: eager fp32 vs compile, fp32 vs bf16 autocast.

Each variant is a real trainer session (the demo's model, multipliers, plan, AdamW, clipping, data) built
in this one process; the variants take turns step by step, and each figure is a median over steps after
warmup (compilation excluded, reported apart). Prints JSON with the load average.

    python benchmarks/trainer_throughput.py                     # the demo config
    python benchmarks/trainer_throughput.py --config tiny --steps 5 --bf16-steps 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from widthwise.train.config import load_config
from widthwise.train.trainer import _Run

VARIANTS = {  # name: (dtype, compile)
    "eager_fp32": ("float32", False),
    "compile_fp32": ("float32", True),
    "eager_bf16": ("bfloat16", False),
    "compile_bf16": ("bfloat16", True),
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="demo")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--steps", type=int, default=20, help="measured steps per fp32 variant")
    parser.add_argument("--bf16-steps", type=int, default=3, help="measured steps per bf16 variant")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args(argv)
    names = args.variants.split(",")
    sessions, setup_s = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            dtype, compile_ = VARIANTS[name]
            config = load_config(args.config, [*args.overrides, f"train.dtype={dtype}",
                                               f"train.compile={str(compile_).lower()}", "train.progress=false"])
            start = time.perf_counter()
            session = _Run(config, Path(tmp) / name, log=lambda msg: None)
            for _ in range(args.warmup):  # includes compilation
                session.train_step()
            setup_s[name] = time.perf_counter() - start
            sessions[name] = session
        loadavg_before = os.getloadavg()
        times: dict[str, list[float]] = {n: [] for n in names}
        rounds = max(args.steps, args.bf16_steps)
        for i in range(rounds):
            for name in names:
                if "bf16" in name and i >= args.bf16_steps:
                    continue
                start = time.perf_counter()
                loss, _ = sessions[name].train_step()
                float(loss)
                times[name].append(time.perf_counter() - start)
    first = sessions[names[0]].config.train
    tokens = first.batch_size * first.seq_len
    result = {
        "config": args.config, "tokens_per_step": tokens, "threads": sessions[names[0]].runtime.threads,
        "loadavg_before": loadavg_before, "loadavg_after": os.getloadavg(),
        "step_s_median": {n: statistics.median(t) for n, t in times.items()},
        "tokens_per_s": {n: round(tokens / statistics.median(t), 1) for n, t in times.items()},
        "setup_and_warmup_s": {n: round(s, 2) for n, s in setup_s.items()},
        "steps_measured": {n: len(t) for n, t in times.items()},
    }
    base = result["step_s_median"].get("eager_fp32")
    if base:
        result["speedup_vs_eager_fp32"] = {n: round(base / s, 3) for n, s in result["step_s_median"].items()}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
