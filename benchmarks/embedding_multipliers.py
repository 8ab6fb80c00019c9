"""Do learnable multipliers on an undecayed input embedding help under ``robust``? Short real trainings.

``robust`` (Fan et al. 2025) gives the input embedding no weight decay, so nothing pins its scale at a
noise equilibrium: the argument for learnable multipliers (arXiv 2601.04890) does not apply to it, and
neither paper tested that combination. This script trains the built-in ``tiny`` config (Shakespeare,
LLaMA-style) under ``robust`` with ``row_col`` multipliers on every hidden matrix, once with multipliers on
the embedding too (placement ``all``) and once without (the hidden matrices only), over several seeds and
widths, and prints the validation losses as JSON (with the load average: the CPU is shared, quote medians).

    python benchmarks/embedding_multipliers.py --widths 32 64 --seeds 0 1 2 --steps 200
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from widthwise.app import trainer
from widthwise.app.config import apply_overrides, load_config

VARIANTS = {"with_embedding": "all", "hidden_only": [r"^blocks\."]}


def run(width: int, seed: int, steps: int, placement, out: Path, lr: float) -> float:
    sets = [f"model.width={width}", "model.heads=" + str(width // 16), "model.kv_heads=" + str(width // 16),
            "scaling.recipe=robust", "scaling.base_width=16", f"train.steps={steps}", f"train.seed={seed}",
            f"optim.lr={lr}", "train.plots=false", "train.tensorboard=false", "train.sample_tokens=0",
            "train.progress=false", "train.threads=1", f"train.eval_every={steps}", f"diagnostics.every={steps}",
            f"train.checkpoint_every={steps}", "train.eval_tokens=8192"]
    config = apply_overrides(load_config("tiny", sets), {"multipliers.placement": placement})
    result = trainer.start(config, out)
    return float(result.summary["val_loss"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=0.01)
    args = ap.parse_args()
    torch.set_num_threads(1)
    losses: dict[str, dict[int, list[float]]] = {v: {w: [] for w in args.widths} for v in VARIANTS}
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for width in args.widths:
            for seed in args.seeds:
                for variant, placement in VARIANTS.items():  # side by side, same seed
                    out = Path(tmp) / f"{variant}-{width}-{seed}"
                    losses[variant][width].append(run(width, seed, args.steps, placement, out, args.lr))
    summary = {
        "setup": {"config": "tiny", "recipe": "robust", "base_width": 16, "steps": args.steps, "lr": args.lr,
                  "seeds": args.seeds},
        "val_loss": losses,
        "median": {v: {w: statistics.median(x) for w, x in d.items()} for v, d in losses.items()},
        "median_diff_with_minus_without": {
            w: statistics.median(a - b for a, b in zip(losses["with_embedding"][w], losses["hidden_only"][w],
                                                       strict=True)) for w in args.widths},
        "wall_s": round(time.time() - start, 1),
        "load_average": os.getloadavg(),
    }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
