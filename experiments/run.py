"""Reproduce the papers' claims: ``python -m experiments.run [EXPERIMENT ...]`` (``make reproduce``: all of them).

Each experiment is a folder of sweep files and an ``analyze.py`` whose ``SWEEPS`` lists them and whose
``analyze()`` turns their runs into figures (``experiments/results/figures``), its own JSON and claim records,
merged into ``experiments/results/claims.json``. Sweeps resume: rerun the same command after an interruption.
``--sweeps-only`` trains without analysing; ``--analyze-only`` analyses what has finished. Each sweep's finished
runs are archived into ``experiments/results/archive`` as it ends (``--archive``: now, for every started sweep,
finished or not) and restored from there when a checkout has no sweep directory.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time

from widthwise.errors import SweepError

from . import lib

#: In the order they run: cheap, single-width experiments first, the width sweeps last.
EXPERIMENTS = ("equilibrium", "width_spectra", "lrm_gain", "projector_scale", "transfer", "muon_width")

log = logging.getLogger("widthwise.experiments")


def module(name: str):
    return importlib.import_module(f"experiments.{name}.analyze")


def archive_experiment(name: str) -> None:
    for sweep in module(name).SWEEPS:
        path = lib.archive(name, sweep)
        if path is not None:
            log.info(f"{name}: sweep {sweep} archived in {lib.rel(path)} ({path.stat().st_size / 1e6:.1f} MB)")


def run_experiment(name: str, *, sweeps: bool, analyze: bool, workers: int, threads: int) -> int:
    mod = module(name)
    for sweep in mod.SWEEPS:
        if lib.restore(name, sweep):
            log.info(f"{name}: sweep {sweep} restored from {lib.rel(lib.archive_path(name, sweep))}")
    if sweeps:
        for sweep in mod.SWEEPS:
            log.info(f"{name}: sweep {sweep} -> {lib.sweep_dir(name, sweep)}")
            code = lib.run_sweep_file(name, sweep, workers=workers, threads=threads)
            lib.archive(name, sweep)
            if code != 0:
                log.error(f"{name}: sweep {sweep} ended with exit code {code}")
                return code
    if analyze:
        started = time.perf_counter()
        try:
            records = mod.analyze()
        except SweepError as err:  # a sweep neither on this machine nor archived
            log.warning(f"{name}: not analysed ({err}); its committed results stand")
            return 0
        lib.update_claims(records)
        lib.write_summary()
        log.info(f"{name}: {len(records)} claim(s) in {lib.rel(lib.CLAIMS)} "
                 f"(analysis {time.perf_counter() - started:.0f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.run", description=__doc__.splitlines()[0])
    parser.add_argument("experiments", nargs="*", metavar="EXPERIMENT", help=f"any of {', '.join(EXPERIMENTS)} "
                        "(default: all, in that order)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--sweeps-only", action="store_true", help="train, do not analyse")
    group.add_argument("--analyze-only", action="store_true", help="analyse the finished runs, train nothing")
    group.add_argument("--archive", action="store_true", help="archive every started sweep's finished runs into "
                       "experiments/results/archive, train and analyse nothing")
    parser.add_argument("--workers", type=int, default=2, help="runs at a time (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="threads per run (default 1)")
    args = parser.parse_args(argv)
    unknown = [e for e in args.experiments if e not in EXPERIMENTS]
    if unknown:
        parser.error(f"unknown experiment(s) {', '.join(unknown)}; expected any of {', '.join(EXPERIMENTS)}")
    from widthwise.app.console import setup_logging

    setup_logging()
    logging.getLogger("widthwise.experiments").setLevel(logging.INFO)
    for name in args.experiments or EXPERIMENTS:
        if args.archive:
            archive_experiment(name)
            continue
        code = run_experiment(name, sweeps=not args.analyze_only, analyze=not args.sweeps_only,
                              workers=args.workers, threads=args.threads)
        if code != 0:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
