"""Claims 1 and 2."""

SWEEPS = ("sweep",)
