"""``widthwise bench``: every performance figure of widthwise, measured side by side, written to one JSON file.

``--quick`` (eager fp32, two small widths, five repeats, the at-scale point at the smaller) takes about three
minutes on 2 CPU cores; the full run (widths 256/512/1024, eager fp32 and compiled) is what BENCHMARKS.md reports.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch._dynamo
from tqdm.auto import tqdm

from ... import __version__
from ...errors import ConfigError
from ...tables import format_table
from ..atomic import atomic_write_text
from .figures import measure_point, muon_optimizer
from .sessions import MODES, Setting, bench_config, session
from .timing import load_average, machine

#: Ratios with a target, and the target (the ratio must not exceed it), at the plan's small batch (1,024 tokens a
#: step: the worst case, where the per-step costs that do not grow with the batch weigh most).
TARGETS = {"multiplier_train_overhead": 1.02, "folded_inference_ratio": 1.02, "diagnostics_overhead": 1.01,
           "trainer_vs_plain_loop": 1.01}
#: The same step ratios at the batch where matmuls dominate (``scale_tokens`` a step), and their targets.
SCALE_TARGETS = {"multiplier_train_overhead": 1.01, "trainer_vs_plain_loop": 1.01}
#: Tokens a step at which the matmuls dominate a training step of the bench's models, as in real training.
SCALE_TOKENS = 8192
#: Ratios reported without a target (``control_ratio``: the A/A control, two sessions without multipliers built
#: alike, whose distance from 1 is the noise floor the step ratios are read against).
REPORTED = ("muon_vs_adamw", "unfolded_inference_ratio", "control_ratio")
#: Graphs dynamo may keep per code object while one point is measured (its models, with room to spare).
COMPILED_PER_POINT = 64


@dataclass(frozen=True)
class Plan:
    """How much a bench run measures."""

    widths: tuple[int, ...]
    modes: tuple[str, ...]
    batch_size: int
    seq_len: int
    reps: int  # interleaved training steps per variant and repeat (and forwards, layer passes)
    rounds: int  # rounds of power iteration vs SVD, and of diagnostics measurements
    steps_between: int  # training steps before each of those rounds
    config: str = "demo"
    name: str = "full"
    repeats: int = 3  # repeated measurements of every step ratio: its spread
    scale_tokens: int = SCALE_TOKENS  # tokens a step of the at-scale point (0: none)
    scale_reps: int = 2  # its interleaved steps per variant and repeat (steps 8x longer average more noise out)
    scale_smallest_only: bool = False  # the at-scale point at the smallest width only (else at every width)

    def scale_batch(self) -> int | None:
        """Sequences a step of the at-scale point: the fewest that hold ``scale_tokens`` (None: no such point)."""
        return -(-self.scale_tokens // self.seq_len) if self.scale_tokens else None


#: Quick: 1,024 tokens a step (the worst case) at two widths, the at-scale point (8,192) at the smaller only; five
#: repeats on fresh sessions (three left ranges of +-10-20% on a shared 2-core VM); the diagnostics' cost the
#: median of three measurements.
QUICK = Plan(name="quick", widths=(128, 256), modes=("eager_fp32",), batch_size=8, seq_len=128, reps=4, rounds=3,
             steps_between=1, repeats=5, scale_smallest_only=True)
FULL = Plan(widths=(256, 512, 1024), modes=MODES, batch_size=4, seq_len=256, reps=6, rounds=3, steps_between=4)


def bench_plan(quick: bool, **changes: Any) -> Plan:
    """The quick or full plan with ``changes`` (``None`` values ignored), checked: a ConfigError names the option."""
    plan = replace(QUICK if quick else FULL, **{k: (tuple(v) if isinstance(v, list) else v)
                                                 for k, v in changes.items() if v is not None})
    for mode in plan.modes:
        if mode not in MODES:
            raise ConfigError(f"--modes: unknown mode {mode!r}; expected some of {', '.join(MODES)}")
    if not plan.widths or not plan.modes:
        raise ConfigError("--widths and --modes need at least one value each")
    for name in ("batch_size", "seq_len", "reps", "rounds", "repeats"):
        if getattr(plan, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: must be a positive integer")
    if plan.scale_tokens < 0:
        raise ConfigError("--scale-tokens: must be 0 (no at-scale point) or a positive integer")
    return plan


def run_bench(plan: Plan, out: Path, *, threads: int | None = None, device: str = "auto",
              overrides: Sequence[str] = (), progress: bool = True) -> dict[str, Any]:
    """Measure every figure of ``plan``, write ``out`` (JSON, atomically) and return what was written."""
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out {out}: is a directory; give a file name such as BENCH.json")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--out {out}: cannot create its directory ({err.strerror or err})") from None
    settings = [Setting(plan.config, w, m, plan.batch_size, plan.seq_len, threads, device)
                for m in plan.modes for w in plan.widths]
    for s in settings:  # every point's config is valid before anything is timed
        bench_config(s, overrides)
    started, load_before = time.perf_counter(), load_average()
    results: list[dict[str, Any]] = []
    bar = tqdm(settings, desc="bench", unit="point", disable=not progress or None, dynamic_ncols=True)
    # Each point compiles up to 7 model instances of one class; dynamo's default limit of 8 graphs per code
    # object would silently send the later ones to eager. A fresh cache per point, and room within it.
    with torch._dynamo.config.patch(recompile_limit=COMPILED_PER_POINT):
        for s in bar:
            torch._dynamo.reset()
            point = f"width {s.width} {s.label()}"
            scaled = not plan.scale_smallest_only or s.width == min(plan.widths)
            results.append(measure_point(s, plan.reps, rounds=plan.rounds, steps_between=plan.steps_between,
                                         overrides=overrides, repeats=plan.repeats,
                                         scale_batch=plan.scale_batch() if scaled else None,
                                         scale_reps=plan.scale_reps,
                                         progress=lambda stage, p=point: bar.set_postfix_str(f"{p}: {stage}")))
    smallest = replace(settings[0], width=min(plan.widths), mode="eager_fp32")  # torch's bf16 Muon is slow
    muon = muon_optimizer(session(smallest, [*overrides, "optim.name=muon"]),
                          max(3, plan.reps // 2))
    report = {
        "widthwise": __version__, "quick": plan.name == "quick", "started": datetime.now(timezone.utc).isoformat(),
        "wall_s": round(time.perf_counter() - started, 1), "machine": machine(),
        "load_average": {"before": load_before, "after": load_average()},
        "plan": {**plan.__dict__, "widths": list(plan.widths), "modes": list(plan.modes)},
        "targets": TARGETS, "scale_targets": SCALE_TARGETS, "results": results,
        "muon_optimizer": {"width": smallest.width, **muon},
    }
    report["summary"] = summarize(results)
    atomic_write_text(out, json.dumps(report, indent=1) + "\n")
    return report


def _value(entry: Any) -> float:
    return entry["ratio"] if isinstance(entry, dict) else entry


def _spread(entries: list[Any]) -> dict[str, Any]:
    """The largest ``repeat_max`` of ``entries`` (ratio dicts with repeats), if any: how high a repeat went."""
    highs = [e["repeat_max"] for e in entries if isinstance(e, dict) and "repeat_max" in e]
    return {"repeat_max": max(highs)} if highs else {}


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per ratio: the worst (largest) and median over points, and whether the target holds everywhere; the
    at-scale ratios likewise under ``at_scale``."""
    summary: dict[str, Any] = {}
    for key in (*TARGETS, *REPORTED):
        values = [_value(r[key]) for r in results]
        summary[key] = {"max": max(values), "median": round(statistics.median(values), 4),
                        **_spread([r[key] for r in results])}
        if key in TARGETS:
            summary[key]["target"] = TARGETS[key]
            summary[key]["met"] = max(values) <= TARGETS[key]
    scaled = [r["at_scale"] for r in results if "at_scale" in r]
    if scaled:
        summary["at_scale"] = {"tokens_per_step": scaled[0]["tokens_per_step"]}
        control = [_value(r["control_ratio"]) for r in scaled]
        summary["at_scale"]["control_ratio"] = {"max": max(control), "min": min(control)}
        for key, target in SCALE_TARGETS.items():
            values = [_value(r[key]) for r in scaled]
            summary["at_scale"][key] = {"max": max(values), "median": round(statistics.median(values), 4),
                                        **_spread([r[key] for r in scaled]), "target": target,
                                        "met": max(values) <= target}
    errors = [r["power_iteration_rel_error"] for r in results]
    speedups = [r["power_iteration_speedup"] for r in results]
    summary["power_iteration_rel_error"] = {"max": max(errors)}
    summary["power_iteration_speedup"] = {"min": min(speedups), "median": statistics.median(speedups)}
    summary["data_loader_share"] = {"max": max(r["data_loader_share"] for r in results)}
    return summary


def table(report: dict[str, Any]) -> str:
    """The figures as a plain-text table, one row per (width, mode)."""
    header = ["width", "mode", "tok/s", "mult", "A/A control", "folded", "muon/adamw", "trainer/plain", "diag",
              "PI speedup", "PI err", "loader", "MFU"]
    rows = []
    for r in report["results"]:
        rows.append((r["width"], r["mode"], f"{r['tokens_per_s']['row_col']:,.0f}",
                     _with_spread(r["multiplier_train_overhead"]), _with_spread(r["control_ratio"]),
                     f"{r['folded_inference_ratio']['ratio']:.3f}",
                     f"{r['muon_vs_adamw']['ratio']:.3f}", _with_spread(r["trainer_vs_plain_loop"]),
                     f"{r['diagnostics_overhead']:.4f}", f"{r['power_iteration_speedup']:.1f}x",
                     f"{r['power_iteration_rel_error']:.1e}", f"{100 * r['data_loader_share']:.2f}%",
                     "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"))
    lines = format_table(rows, header=header, indent="  ", align="right").splitlines()
    tokens = report["results"][0]["tokens_per_step"]
    targets = ", ".join(f"{k} <= {v}: {'met' if report['summary'][k]['met'] else 'MISSED'} "
                        f"(worst {report['summary'][k]['max']:.4f})" for k, v in TARGETS.items())
    lines.append(f"  at {tokens:,} tokens a step (the worst case); [min, max] over {report['plan']['repeats']} "
                 "repeats in brackets, each on sessions built afresh; A/A control: two identical sessions without "
                 "multipliers, the noise floor")
    for r in report["results"]:
        c = r["multiplier_costs"]
        lines.append(f"  multipliers' share, width {r['width']} {r['mode']}: forward + backward "
                     f"{c['forward_backward_ms']:+.2f} ms ({c['forward_backward_ratio']['ratio']:.3f}x "
                     f"{AGAINST[c['forward_backward_against']]}), update {c['update_ms']:+.2f} ms, "
                     f"of a {1e3 * r['step_s']['row_col']:.1f} ms step{_own_work(r)}")
    scale = report["summary"].get("at_scale")
    if scale:
        for r in report["results"]:
            if "at_scale" in r:
                a = r["at_scale"]
                c = a["multiplier_costs"]
                lines.append(f"  at {a['tokens_per_step']:,} tokens a step, width {r['width']} {r['mode']}: "
                             f"mult {_with_spread(a['multiplier_train_overhead'])}, trainer/plain "
                             f"{_with_spread(a['trainer_vs_plain_loop'])}, A/A control "
                             f"{_with_spread(a['control_ratio'])}; multipliers' share: forward + backward "
                             f"{c['forward_backward_ms']:+.2f} ms ({c['forward_backward_ratio']['ratio']:.3f}x), "
                             f"update {c['update_ms']:+.2f} ms, of a {1e3 * a['step_s']['row_col']:.1f} ms step"
                             f"{_own_work(a)}")
        targets += "; at scale: " + ", ".join(
            f"{k} <= {v}: {'met' if scale[k]['met'] else 'MISSED'} (worst {scale[k]['max']:.4f})"
            for k, v in SCALE_TARGETS.items())
    m = report["muon_optimizer"]
    muon = (f"Muon step alone (width {m['width']}, first block): batched bf16 x{m['batched_bf16_speedup']:.2f} vs "
            f"torch (bit-identical: {m['bf16_bit_identical_to_torch']}), batched {m['auto_ns_dtype']} "
            f"x{m['batched_auto_speedup']:.2f}")
    return "\n".join([*lines, f"  targets: {targets}", f"  {muon}"])


#: What the multipliers' forward + backward was timed against, as the table says it.
AGAINST = {"bypassed": "the same model without them", "folded": "the folded model, same weights"}


def _own_work(point: dict[str, Any]) -> str:
    """``: own work S% of the step; alone, caches cold: matrices +M ms, embedding +E ms`` (eager points; under
    compile neither part is measured)."""
    share = point["multiplier_own_work"]
    own = "" if share is None else f": own work {100 * share:.1f}% of the step"
    isolated = point["multiplier_costs"]["isolated"]
    if isolated is None:
        return own
    above = isolated["ms_above_leaf"]
    embedding = f", embedding {above['embedding']:+.2f} ms" if "embedding" in above else ""
    return f"{own}; alone, caches cold: matrices {above['widthwise']:+.2f} ms{embedding}"


def _with_spread(entry: dict[str, Any]) -> str:
    """``1.004 [0.998, 1.011]``: a ratio and the range of its repeats."""
    if "repeat_min" not in entry:
        return f"{entry['ratio']:.3f}"
    return f"{entry['ratio']:.3f} [{entry['repeat_min']:.3f}, {entry['repeat_max']:.3f}]"
