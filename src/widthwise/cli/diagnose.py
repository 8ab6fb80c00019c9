"""``widthwise diagnose``: measure a run's checkpoint and print the diagnosis per layer type."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..tables import format_table
from .args import Subparsers, positive_int


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "diagnose", help="measure a run: spectra, norms vs the noise equilibrium, gains, multipliers",
        description="Measure a run's checkpoint (exact spectra, top singular values, RMS against the AdamW noise "
                    "equilibrium and the ABM reference, sublayer gains, multiplier statistics and symmetry drift); "
                    "write RUN_DIR/diagnostics.json and plots of these over training in RUN_DIR/plots/diagnostics/.",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a `widthwise train` run directory")
    p.add_argument("--step", type=int, help="checkpoint step to measure (default: the latest)")
    p.add_argument("--sequences", type=positive_int, default=16,
                   help="validation sequences for the sublayer gains (default: 16)")
    p.add_argument("--no-plots", action="store_true", help="write diagnostics.json only")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..app.diagnose import diagnose
    from ..app.rundir import RunDir

    d = diagnose(args.run_dir, step=args.step, sequences=args.sequences, plots=not args.no_plots)
    print(f"diagnosed {args.run_dir} at step {d['step']} (width {d['width']}, base {d['base_width']}, "
          f"recipe {d['recipe']}):")
    print(diagnosis_table(d))
    for note in d["notes"] + d["multipliers"]["warnings"]:
        print(f"  note: {note}")
    print(f"  results: {RunDir(args.run_dir, 'diagnose').diagnosis_file}")
    if d.get("plots"):
        print(f"  plots: {Path(d['plots'][0]).parent}")
    return 0


def diagnosis_table(d: dict[str, Any]) -> str:
    """Per layer type (mean over blocks): sigma_max, RMS against its ABM reference, sublayer gain."""
    keys = ("sigma_max", "rms", "abm_ratio", "equilibrium_ratio", "sublayer_gain")
    rows = [[kind, *(f"{v[k]:.4g}" if k in v else "-" for k in keys)] for kind, v in d["layer_types"].items()]
    return format_table(rows, header=["layer", "sigma_max", "rms", "rms/abm", "rms/equil", "gain"], indent="  ")
