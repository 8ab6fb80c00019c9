"""Claim 9."""

SWEEPS = ("sweep",)
