"""Sweeps over width, LR and WD (:func:`run_sweep`): the grid, the results database, the driver and its workers."""

from ...errors import SweepError
from .driver import run_sweep
from .spec import Point, SweepSpec, expand, load_sweep, parse_sweep
from .store import ResultsDB, read_results

__all__ = ["Point", "ResultsDB", "SweepError", "SweepSpec", "expand", "load_sweep", "parse_sweep", "read_results",
           "run_sweep"]
