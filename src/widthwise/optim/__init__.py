"""Optimizers built from a plan: AdamW, or Muon on the hidden matrices with AdamW on the rest."""

from .build import OPTIMIZERS, build_optimizer, muon_ns_dtype
from .combined import CombinedOptimizer
from .muon import NS_DTYPES, BatchedMuon

__all__ = ["NS_DTYPES", "OPTIMIZERS", "BatchedMuon", "CombinedOptimizer", "build_optimizer", "muon_ns_dtype"]
