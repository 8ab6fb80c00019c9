"""Claims 5 and 6."""

SWEEPS = ("gain", "ablations")
