"""Sweeps over width, LR and WD, their analysis, zero-shot transfer and recipe calibration."""

from .spec import Point, SweepError, SweepSpec, expand, load_sweep, parse_sweep
from .store import ResultsDB, read_results

__all__ = ["Point", "ResultsDB", "SweepError", "SweepSpec", "expand", "load_sweep", "parse_sweep", "read_results"]
