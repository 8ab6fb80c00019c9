"""Sweeps over width, LR and WD (:func:`run_sweep`), their analysis (:func:`analyze`), zero-shot transfer to a
target width (:func:`transfer_config`) and recipe calibration (:func:`calibrate_rows`)."""

from .analysis import analyze
from .calibration import calibrate_rows, write_calibration
from .driver import run_sweep
from .spec import Point, SweepError, SweepSpec, expand, load_sweep, parse_sweep
from .store import ResultsDB, read_results
from .transfer import transfer_config, write_transfer

__all__ = ["Point", "ResultsDB", "SweepError", "SweepSpec", "analyze", "calibrate_rows", "expand", "load_sweep",
           "parse_sweep", "read_results", "run_sweep", "transfer_config", "write_calibration", "write_transfer"]
