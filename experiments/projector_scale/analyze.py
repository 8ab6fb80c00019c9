"""Claim 7."""

SWEEPS = ("sweep",)
