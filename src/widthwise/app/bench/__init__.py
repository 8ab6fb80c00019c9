"""``widthwise bench``: the cost of every widthwise feature, as ratios measured side by side in one process."""

from .runner import FULL, QUICK, TARGETS, Plan, bench_plan, run_bench, table

__all__ = ["FULL", "QUICK", "TARGETS", "Plan", "bench_plan", "run_bench", "table"]
