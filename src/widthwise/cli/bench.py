"""``widthwise bench``: what widthwise costs, measured side by side in one process."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import RunError
from .args import Subparsers, add_overrides, int_list, name_list, positive_int


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "bench", help="measure what widthwise costs, side by side: multipliers, Muon, diagnostics, the trainer",
        description="Time the reference model's training step with and without learnable multipliers, with Muon "
                    "and AdamW, against a plain PyTorch loop; folded vs plain inference; power iteration vs SVD; "
                    "the diagnostics' share; tokens/s, MFU and the data loader's share. Every figure is a ratio "
                    "of interleaved repetitions in one process (medians, load average recorded), each step ratio "
                    "beside an A/A control (two identical sessions) that shows the machine's noise. The "
                    "multipliers' own work is also timed: their forward + backward against the same model with "
                    "their passes bypassed, their update, and (eager) their passes alone on the model's weights "
                    "with the caches emptied.",
        epilog="quick: eager fp32 at two small widths, few repetitions; full: widths 256, 512, 1024, eager fp32 and "
               "compiled (what BENCHMARKS.md reports). Every point runs 1,024 tokens a step (the worst case); the "
               "multiplier and trainer ratios are also measured at --scale-tokens (quick: at the smaller width "
               "only). The JSON records the plan it ran and the CPU's kind",
    )
    p.add_argument("config", nargs="?", default="demo", help="base config, YAML or built-in name (default: demo)")
    p.add_argument("--out", type=Path, required=True, help="JSON file to write (a plot goes beside it)")
    p.add_argument("--quick", action="store_true", help="eager fp32 at two small widths: about 3 minutes on 2 cores")
    p.add_argument("--widths", type=int_list, help="comma-separated widths")
    p.add_argument("--modes", type=name_list, help="comma-separated: eager_fp32, compile")
    for name, what in (("batch-size", "sequences per step"), ("seq-len", "tokens per sequence"),
                       ("reps", "interleaved steps per variant and repeat"),
                       ("repeats", "repeated measurements of each step ratio, each on sessions built afresh, for its "
                                   "spread (default: 5 quick, 3 full)"),
                       ("rounds", "power-iteration/diagnostics rounds")):
        p.add_argument(f"--{name}", type=positive_int, help=what)
    p.add_argument("--scale-tokens", type=int, metavar="N",
                   help="tokens a step of the at-scale point, where matmuls dominate (default 8192; 0: none)")
    p.add_argument("--threads", type=positive_int, help="CPU threads (default: all)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: auto (CUDA if any)")
    add_overrides(p, "override a field of the base config (repeatable)")
    p.add_argument("--no-plot", action="store_true", help="JSON only")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file (and its plot)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..app.bench import bench_plan, run_bench, table
    from ..app.bench.timing import cpu_kind

    targets = [args.out] if args.no_plot else [args.out, args.out.with_suffix(".png")]
    existing = next((p for p in targets if p.is_file() or p.is_symlink()), None)
    if existing is not None and not args.force:  # checked before minutes of measuring, not after
        raise RunError(f"--out: {existing} exists; pass --force to overwrite it")
    plan = bench_plan(args.quick, widths=args.widths, modes=args.modes, batch_size=args.batch_size,
                      seq_len=args.seq_len, reps=args.reps, rounds=args.rounds, config=args.config,
                      repeats=args.repeats, scale_tokens=args.scale_tokens)
    report = run_bench(plan, args.out, threads=args.threads, device=args.device, overrides=args.overrides,
                       progress=not args.quiet)
    print(f"bench ({'quick' if report['quick'] else plan.name}): {len(report['results'])} points in "
          f"{report['wall_s']:.0f} s, load average {report['load_average']['before'][0]:.2f} -> "
          f"{report['load_average']['after'][0]:.2f}, on {cpu_kind(report['machine'])}")
    print(table(report))
    if not args.no_plot:
        from ..app.bench.plots import plot_bench

        print(f"  plot: {plot_bench(report, args.out.with_suffix('.png'))}")
    print(f"  results: {args.out}")
    return 0
