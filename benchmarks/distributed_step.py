"""Step time of `widthwise train` on 2 torchrun ranks (DDP, FSDP2; AdamW, Muon) against 1 process, side by side.

Each repetition runs every variant once, one after the other (interleaved, so a load change hits them alike), on
the demo model (width 128, 4 blocks, 16 x 128 = 2,048 tokens a step, eager fp32, diagnostics off) for a few
steps, and reads the median step time of each run from its ``metrics.jsonl`` (first steps dropped). 1 process
runs with 1 and with 2 threads, each rank with 1 thread: the 2-rank runs use the cores of the 2-thread run.
Prints JSON with the medians over repetitions, their ratios to 1 process on 1 thread (AdamW or Muon), and the
load average before and after (the CPU is shared).

    python benchmarks/distributed_step.py --reps 3 --steps 12
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

VARIANTS = {
    "1 process, 1 thread": (1, 1, ()),
    "1 process, 2 threads": (1, 2, ()),
    "2 ranks DDP, 1 thread each": (2, 1, ("train.parallel=ddp",)),
    "2 ranks FSDP2, 1 thread each": (2, 1, ("train.parallel=fsdp",)),
    "muon: 1 process, 1 thread": (1, 1, ("optim.name=muon", "optim.ns_dtype=float32")),
    "muon: 1 process, 2 threads": (1, 2, ("optim.name=muon", "optim.ns_dtype=float32")),
    "muon: 2 ranks FSDP2 (DistributedMuon), 1 thread each": (2, 1, ("train.parallel=fsdp", "optim.name=muon",
                                                                  "optim.ns_dtype=float32")),
}


def step_seconds(out: Path, nproc: int, threads: int, extra: tuple[str, ...], steps: int) -> float:
    sets = [f"train.steps={steps}", "train.compile=false", "train.dtype=float32", f"train.threads={threads}",
            "train.progress=false", "train.tensorboard=false", "train.plots=false", "train.sample_tokens=0",
            "diagnostics.every=null", f"train.eval_every={steps}", "train.eval_tokens=2048",
            f"train.checkpoint_every={steps}", "schedule.warmup=2", *extra]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [*launch, "-m", "widthwise", "train", "demo", "--out", str(out), *[a for s in sets for a in ("--set", s)]]
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    times = [2048 * 1.0 / r["tokens_per_s"] for r in rows[2:] if r.get("tokens_per_s")]
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    load_before = os.getloadavg()
    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for i, (name, (nproc, threads, extra)) in enumerate(VARIANTS.items()):
                seconds[name].append(step_seconds(Path(tmp) / f"r{rep}-{i}", nproc, threads, extra, args.steps))
    medians = {name: statistics.median(v) for name, v in seconds.items()}
    print(json.dumps({"step_s_median": medians, "step_s": seconds,
                      "ratio_to_1_process_1_thread": {n: m / medians["muon: 1 process, 1 thread" if "muon" in n
                                                                     else "1 process, 1 thread"]
                                                      for n, m in medians.items()},
                      "load_before": load_before, "load_after": os.getloadavg(), "cpus": os.cpu_count()}, indent=1))


if __name__ == "__main__":
    main()
