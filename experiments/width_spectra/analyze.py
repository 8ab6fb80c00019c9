"""Claims 3 and 8."""

SWEEPS = ("widths", "premise")
