"""The ``widthwise`` command line. Exit codes: 0 success, 2 bad input (one line on stderr), 3 diverged."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from ..app.config import builtin_names, load_config
from ..errors import EXIT_BAD_INPUT, RunError, WidthwiseError


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="widthwise", description="Width-robust LLM pretraining.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    train = sub.add_parser(
        "train", help="train the reference LLaMA model",
        description="Train the reference LLaMA model into a run directory, or resume one.",
        epilog=f"built-in configs: {', '.join(builtin_names())}",
    )
    train.add_argument("config", nargs="?", help="YAML config file or built-in name (default: all defaults)")
    train.add_argument("--out", type=Path, help="new run directory")
    train.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR")
    train.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="overrides",
                       help="override a config field (repeatable)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_coord_check(sub)
    diagnose = sub.add_parser(
        "diagnose", help="measure a run: spectra, norms vs the noise equilibrium, gains, multipliers",
        description="Measure a run's checkpoint (exact spectra, top singular values, RMS against the AdamW noise "
                    "equilibrium and the ABM reference, sublayer gains, multiplier statistics and symmetry drift); "
                    "write RUN_DIR/diagnostics.json and plots of these over training in RUN_DIR/plots/diagnostics/.",
    )
    diagnose.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a `widthwise train` run directory")
    diagnose.add_argument("--step", type=int, help="checkpoint step to measure (default: the latest)")
    diagnose.add_argument("--sequences", type=_positive_int, default=16,
                          help="validation sequences for the sublayer gains (default: 16)")
    diagnose.add_argument("--no-plots", action="store_true", help="write diagnostics.json only")
    _add_sweep_commands(sub)
    _add_bench(sub)
    return parser


def _add_bench(sub: argparse._SubParsersAction) -> None:
    from ..app.bench import FULL, QUICK

    def plan(p) -> str:
        return (f"widths {','.join(map(str, p.widths))}, modes {','.join(p.modes)}, batch {p.batch_size}x{p.seq_len}, "
                f"{p.reps} reps")

    bench = sub.add_parser(
        "bench", help="measure what widthwise costs, side by side: multipliers, Muon, diagnostics, the trainer",
        description="Time the reference model's training step with and without learnable multipliers, with Muon "
                    "and AdamW, against a plain PyTorch loop; folded vs plain inference; power iteration vs SVD; "
                    "the diagnostics' share; tokens/s, MFU and the data loader's share. Every figure is a ratio "
                    "of interleaved repetitions in one process (medians, load average recorded).",
        epilog=f"quick: {plan(QUICK)}; full: {plan(FULL)}",
    )
    bench.add_argument("config", nargs="?", default="demo", help="base config, YAML or built-in name (default: demo)")
    bench.add_argument("--out", type=Path, required=True, help="JSON file to write (a plot goes beside it)")
    bench.add_argument("--quick", action="store_true", help="eager fp32 at two small widths: about 30 s on 2 cores")
    bench.add_argument("--widths", type=_int_list, help="comma-separated widths")
    bench.add_argument("--modes", type=_name_list, help="comma-separated: eager_fp32, compile")
    for name, what in (("batch-size", "sequences per step"), ("seq-len", "tokens per sequence"),
                       ("reps", "interleaved steps per variant"), ("rounds", "power-iteration/diagnostics rounds")):
        bench.add_argument(f"--{name}", type=_positive_int, help=what)
    bench.add_argument("--threads", type=_positive_int, help="CPU threads (default: all)")
    bench.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: auto (CUDA if any)")
    bench.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="overrides",
                       help="override a field of the base config (repeatable)")
    bench.add_argument("--no-plot", action="store_true", help="JSON only")
    bench.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_execution(p: argparse.ArgumentParser) -> None:
    """Options shared by the commands that run many trainings: where and how wide."""
    p.add_argument("--workers", type=_positive_int, help="runs at a time (default: cores / threads)")
    p.add_argument("--threads", type=_positive_int, help="threads per run (default: 2 with 4+ cores, else 1)")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local worker processes, or Ray (default: local)")
    p.add_argument("--address", help="Ray cluster address for --executor ray (default: start a local instance)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_sweep_commands(sub: argparse._SubParsersAction) -> None:
    sweep = sub.add_parser(
        "sweep", help="run a grid of trainings (width x LR x WD x recipe ...), resumable",
        description="Run every point of a sweep file's grid as an ordinary run directory under SWEEP_DIR/runs/ and "
                    "record each in SWEEP_DIR/results.db (SQLite). Rerunning the same command resumes the sweep.",
        epilog="sweep file: {base: CONFIG, grid: {section.key: [values]}, set: {section.key: value}, seeds: [..]}",
    )
    sweep.add_argument("sweep_file", type=Path, metavar="SWEEP.yaml", help="the sweep file")
    sweep.add_argument("--out", type=Path, required=True, metavar="SWEEP_DIR", help="sweep directory (new or resumed)")
    _add_execution(sweep)
    analyze = sub.add_parser(
        "analyze", help="where the LR/WD optimum sits at each width, and whether it transfers",
        description="Find the best LR and WD per recipe and width (grid and log-quadratic fit), judge transfer across "
                    "widths, and write SWEEP_DIR/report.md, SWEEP_DIR/optima.json and plots in SWEEP_DIR/plots/.",
    )
    analyze.add_argument("sweep_dir", type=Path, metavar="SWEEP_DIR")
    analyze.add_argument("--no-plots", action="store_true", help="write optima.json and report.md only")
    transfer = sub.add_parser(
        "transfer", help="write a train config for a target width from a sweep's optimum",
        description="Take the proxy optimum of an analyzed sweep (base-width LR/WD: the recipe scales them) and write "
                    "a train config at --width; print the plan with the absolute per-group LR and WD there.",
    )
    transfer.add_argument("sweep_dir", type=Path, metavar="SWEEP_DIR")
    transfer.add_argument("--width", type=_positive_int, required=True, help="target model width")
    transfer.add_argument("--out", type=Path, required=True, metavar="CONFIG.yaml", help="config file to write")
    transfer.add_argument("--recipe", help="pick the family of this recipe")
    transfer.add_argument("--optimizer", help="pick the family of this optimizer")
    transfer.add_argument("--multipliers", help="pick the family of this multiplier kind")
    transfer.add_argument("--family", help="pick a family by its full label (as `widthwise analyze` prints it)")
    transfer.add_argument("--from-width", type=_positive_int, help="proxy width to take the optimum from "
                                                                    "(default: the widest swept)")
    transfer.add_argument("--force", action="store_true", help="overwrite CONFIG.yaml")
    cal = sub.add_parser(
        "calibrate", help="fit a recipe's WD exponent for your model and optimizer",
        description="Train short steady-state runs at 3+ widths, fit the width exponent of sigma_max (or the sublayer "
                    "gain) per layer type, and derive the WD exponent that keeps it width-invariant; write "
                    "OUT/recipe.yaml (usable as scaling.recipe), OUT/calibration.json and OUT/calibration.png.",
        epilog=f"built-in configs: {', '.join(builtin_names())}",
    )
    cal.add_argument("config", nargs="?", default=None, help="YAML config file or built-in name (default: tiny with "
                                                             "calibration settings)")
    cal.add_argument("--out", type=Path, required=True, help="output directory (a sweep directory: resumable)")
    cal.add_argument("--widths", type=_int_list, help="comma-separated widths, at least 3 (default: 32,64,128)")
    cal.add_argument("--steps", type=_positive_int, help="steps per run at a constant LR")
    cal.add_argument("--metric", choices=("sigma_max", "gain"), default="sigma_max", help="what to keep invariant")
    cal.add_argument("--seeds", type=_positive_int, default=1, help="seeds per width (default: 1)")
    cal.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="overrides",
                     help="override a config field (repeatable)")
    _add_execution(cal)


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _name_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _coord_check_module():
    """``widthwise.app.coord_check``, the module."""
    return importlib.import_module("widthwise.app.coord_check")


def _add_coord_check(sub: argparse._SubParsersAction) -> None:
    cc = _coord_check_module()

    p = sub.add_parser(
        "coord-check", help="coordinate check: activation size against width for each recipe",
        description="Train each recipe a few steps at several widths and fit how activation size grows with width "
                    "(microsoft/mup's coordinate check), plus top singular values and sublayer gains.",
        epilog=f"default: built-in config {cc.DEFAULT_CONFIG} at optim.lr={cc.DEFAULT_LR:g}; built-in configs: "
               f"{', '.join(builtin_names())}",
    )
    p.add_argument("config", nargs="?", help=f"YAML config file or built-in name (default: {cc.DEFAULT_CONFIG} at lr "
                                             f"{cc.DEFAULT_LR:g}); its head dim and depth are kept at every width")
    p.add_argument("--out", type=Path, required=True, help="new output directory")
    p.add_argument("--widths", type=_int_list, default=list(cc.DEFAULT_WIDTHS),
                   help=f"comma-separated widths (default: {','.join(map(str, cc.DEFAULT_WIDTHS))})")
    p.add_argument("--recipes", type=_name_list, default=list(cc.DEFAULT_RECIPES),
                   help=f"comma-separated recipes (default: {','.join(cc.DEFAULT_RECIPES)})")
    p.add_argument("--steps", type=_positive_int, default=cc.DEFAULT_STEPS,
                   help=f"training steps per model (default: {cc.DEFAULT_STEPS})")
    p.add_argument("--seeds", type=_positive_int, default=1, help="number of seeds, from train.seed (default: 1)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="overrides",
                   help="override a config field (repeatable), e.g. optim.lr=1e-2")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _train(args: argparse.Namespace) -> int:
    from ..app import trainer

    overrides = list(args.overrides) + (["train.progress=false"] if args.quiet else [])
    if args.resume is not None:
        if args.config is not None or args.out is not None:
            raise RunError("--resume takes the run directory only: drop CONFIG and --out")
        result = trainer.resume(args.resume, overrides)
    else:
        if args.out is None:
            raise RunError("--out RUN_DIR is required (or --resume RUN_DIR)")
        config = load_config(args.config, overrides)
        result = trainer.start(config, args.out)
    _report(result)
    return result.exit_code


def _coord_check(args: argparse.Namespace) -> int:
    cc = _coord_check_module()

    out: Path = args.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunError(f"--out {out}: already exists and is not empty; choose another --out")
    cc.check_overrides(args.overrides)
    config = load_config(args.config, args.overrides) if args.config else cc.default_config(args.overrides)
    seeds = [config.train.seed + i for i in range(args.seeds)]
    cc.check_grid(config, args.widths, args.recipes, args.steps, seeds, prefix="--")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunError(f"--out {out}: cannot create it ({err.strerror or err})") from None
    check = cc.coord_check(config, args.widths, recipes=args.recipes, steps=args.steps, seeds=seeds,
                           progress=not args.quiet)
    check.save(out / "coord_check.json")
    check.plot(out / "coord_check.png")
    print(f"coordinate check: {len(check.recipes)} recipes x widths {','.join(map(str, check.widths))} x "
          f"{len(seeds)} seed(s), {check.steps} steps at lr {check.lr:g}, {check.wall_s:.0f} s")
    print("slope of log(mean |x|) against log(width) at the last step (0 = flat):")
    print(check.table())
    print(f"  results: {out / 'coord_check.json'}\n  plot: {out / 'coord_check.png'}")
    return 0


def _diagnose(args: argparse.Namespace) -> int:
    from ..app.diagnose import diagnose

    d = diagnose(args.run_dir, step=args.step, sequences=args.sequences, plots=not args.no_plots,
                 log=lambda msg: print(msg, file=sys.stderr))
    print(f"diagnosed {args.run_dir} at step {d['step']} (width {d['width']}, base {d['base_width']}, "
          f"recipe {d['recipe']}):")
    print(_diagnosis_table(d))
    for note in d["notes"] + d["multipliers"]["warnings"]:
        print(f"  note: {note}")
    print(f"  results: {args.run_dir / 'diagnostics.json'}")
    if d.get("plots"):
        print(f"  plots: {Path(d['plots'][0]).parent}")
    return 0


def _diagnosis_table(d: dict) -> str:
    """Per layer type (mean over blocks): sigma_max, RMS against its ABM reference, sublayer gain."""
    header = ("layer", "sigma_max", "rms", "rms/abm", "rms/equil", "gain")
    rows = [header]
    for kind, v in d["layer_types"].items():
        rows.append((kind, *(f"{v[k]:.4g}" if k in v else "-" for k in
                             ("sigma_max", "rms", "abm_ratio", "equilibrium_ratio", "sublayer_gain"))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _sweep(args: argparse.Namespace) -> int:
    from ..app.sweep.driver import run_sweep
    from ..app.sweep.spec import load_sweep

    result = run_sweep(load_sweep(args.sweep_file), args.out, workers=args.workers, threads=args.threads,
                       executor=args.executor, address=args.address, progress=not args.quiet)
    if result.exit_code == 0:
        print(f"sweep {args.out}: {result.counts['completed']} completed, {result.counts['diverged']} diverged, "
              f"{result.wall_s:.0f} s\n  next: widthwise analyze {args.out}")
    return result.exit_code


def _analyze(args: argparse.Namespace) -> int:
    from ..app.analysis.analyze import analyze

    optima = analyze(args.sweep_dir, plots=not args.no_plots)
    print(f"analyzed {args.sweep_dir}: {len(optima['families'])} famil{'y' if len(optima['families']) == 1 else 'ies'}")
    for fam in optima["families"]:
        t = fam["transfer"]
        print(f"  {fam['label']}: {t['verdict']}: {t['summary']}")
        for width, entry in fam["per_width"].items():
            fit = entry["fit"]
            print(f"    width {width}: best lr {fit['lr']:.3g}, wd {fit['weight_decay']:.3g} "
                  f"(val loss {entry['best']['val_loss']:.4f})")
    print(f"  report: {optima['report']}\n  optima: {Path(args.sweep_dir) / 'optima.json'}")
    return 0


def _transfer(args: argparse.Namespace) -> int:
    from ..app.transfer import transfer_config, write_transfer

    t = transfer_config(args.sweep_dir, args.width, recipe=args.recipe, optimizer=args.optimizer,
                        multipliers=args.multipliers, from_width=args.from_width, family=args.family)
    write_transfer(t, args.out, force=args.force)
    for warning in t.warnings:
        print(f"widthwise: warning: {warning}", file=sys.stderr)
    print(f"{t.family}: optimum at width {t.from_width}: base lr {t.lr:.4g}, base wd {t.weight_decay:.4g} "
          f"({t.verdict})")
    print(f"plan at width {args.width}:")
    print(t.plan_table)
    print(f"  config: {args.out}\n  train it: widthwise train {args.out} --out RUN_DIR")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from ..app.calibrate import run_calibration

    return run_calibration(args)


def _bench(args: argparse.Namespace) -> int:
    from ..app.bench import bench_plan, run_bench, table

    plan = bench_plan(args.quick, widths=args.widths, modes=args.modes, batch_size=args.batch_size,
                      seq_len=args.seq_len, reps=args.reps, rounds=args.rounds, config=args.config)
    report = run_bench(plan, args.out, threads=args.threads, device=args.device, overrides=args.overrides,
                       progress=not args.quiet)
    print(f"bench ({'quick' if report['quick'] else plan.name}): {len(report['results'])} points in "
          f"{report['wall_s']:.0f} s, load average {report['load_average']['before'][0]:.2f} -> "
          f"{report['load_average']['after'][0]:.2f}")
    print(table(report))
    if not args.no_plot:
        from ..app.bench.plots import plot_bench

        print(f"  plot: {plot_bench(report, args.out.with_suffix('.png'))}")
    print(f"  results: {args.out}")
    return 0


_SWEEP_COMMANDS = {"sweep": _sweep, "analyze": _analyze, "transfer": _transfer, "calibrate": _calibrate,
                   "bench": _bench}


def _report(result) -> None:
    s, run = result.summary, result.run_dir
    val = f"{s['val_loss']:.4f}" if isinstance(s.get("val_loss"), float) else "n/a"
    print(f"{s['status']}: {s['steps']} steps, {s['tokens']:,} tokens, val loss {val}, "
          f"{s.get('tokens_per_s') or 0:,.0f} tokens/s, {s['wall_s']:.0f} s")
    print(f"  run directory: {run}")
    for label, path in (("loss curve", run / "plots" / "loss.png"), ("plots", run / "plots"),
                        ("metrics", run / "metrics.jsonl"), ("samples", run / "samples.txt")):
        if path.exists():
            print(f"  {label}: {path}")
    sample = run / "samples.txt"
    if sample.exists() and s["status"] == "completed":
        print("\n--- sample from the trained model ---")
        print(sample.read_text(encoding="utf-8").rstrip())


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "coord-check":
            return _coord_check(args)
        if args.command == "diagnose":
            return _diagnose(args)
        if args.command in _SWEEP_COMMANDS:
            return _SWEEP_COMMANDS[args.command](args)
    except WidthwiseError as err:
        message = " ".join(str(err).split())  # one line, whatever the message
        print(f"widthwise: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
