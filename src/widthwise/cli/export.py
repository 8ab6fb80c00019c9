"""``widthwise export``: a run as a plain Hugging Face model folder, multipliers folded into the weights."""

from __future__ import annotations

import argparse
from pathlib import Path

from .args import Subparsers


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "export", help="write a run as a plain HF transformers model (multipliers folded) with its tokenizer",
        description="Fold the learnable multipliers and the recipe's fixed forward multipliers (embedding, head 1/m, "
                    "attention scale) into the weights and write HF_DIR: config.json, model.safetensors, "
                    "generation_config.json, the run's tokenizer and a model card (README.md). The export is checked: "
                    "the plain model's logits equal the run's (fp32, 1e-4 relative). What a plain model cannot "
                    "express is refused, naming why.",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a `widthwise train` run directory")
    p.add_argument("--out", type=Path, required=True, metavar="HF_DIR", help="folder to write (new or empty)")
    p.add_argument("--step", type=int, help="checkpoint step to export (default: the latest)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..app.export import export_run

    result = export_run(args.run_dir, args.out, step=args.step)
    print(f"exported {args.run_dir} at step {result['step']} as {result['architecture']} to {result['out']} "
          f"(logits within {result['logit_difference']:.2g} relative)")
    print(f"  files: {', '.join(result['files'])}")
    return 0
