"""Claim 4."""

SWEEPS = ("robust", "mup_constant_wd", "mup", "sp", "horizon")
