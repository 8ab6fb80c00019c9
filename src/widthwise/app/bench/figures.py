"""The figures of ``widthwise bench`` at one :class:`~widthwise.app.bench.sessions.Setting`, each measured side by side.

:func:`measure_point` builds the sessions (``row_col`` multipliers + AdamW, no multipliers, ``row_col`` +
Muon, and the plain loop), lets their training steps take turns, then times inference, the spectral
diagnostics and the two ways of applying multipliers, and returns one JSON-ready dict.
"""

from __future__ import annotations

import gc
import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F

from ...diagnostics.monitor import TrainingDiagnostics
from ...diagnostics.spectra import singular_values, top_singular_values
from ...multipliers import fold_multipliers
from ...optim.build import muon_ns_dtype
from ...optim.muon import BatchedMuon
from ...parametrizations import Multipliers
from ..config import DiagnosticsConfig
from ..session import Session
from ..setup import apply_update, build
from .passes import bypassed, isolated_passes
from .peak import peak_flops
from .sessions import PlainLoop, Setting, session, train_step
from .timing import interleaved, load_average, median_s, ratio, timed

#: Variants of the training step: name -> config overrides.
VARIANTS: dict[str, list[str]] = {
    "row_col": ["multipliers.kind=row_col", "multipliers.placement=all", "optim.name=adamw"],
    "none": ["multipliers.kind=none", "optim.name=adamw"],
    "muon": ["multipliers.kind=row_col", "multipliers.placement=all", "optim.name=muon"],
}


#: The A/A control: a second session without multipliers, built like ``none``. Its step ratio to ``none`` is the
#: noise floor of the point: two identical models that differ only by where they lie in memory and when they ran.
CONTROL = "none_control"


def training_steps(setting: Setting, names: Sequence[str], reps: int, repeats: int, warmup: int,
                   overrides: Sequence[str] = (), seed: int = 0) -> tuple[dict[str, list[float]], dict[str, Session]]:
    """Seconds per training step of each variant in ``names``, of the A/A :data:`CONTROL` and of the plain loop
    (on the ``row_col`` model), taking turns; and the sessions of the last repeat.

    Each of the ``repeats`` builds its sessions afresh, in a shuffled order (``seed``), and runs ``reps``
    interleaved rounds after ``warmup`` untimed steps each: a model's place in memory moves its step time by a
    few percent on a CPU, and a fresh draw per repeat turns that bias into the spread the repeats report.
    """
    order = random.Random(seed)
    steps: dict[str, list[float]] = {}
    runs: dict[str, Session] = {}
    for _ in range(repeats):
        runs = {}
        gc.collect()
        built = [*names, CONTROL]
        order.shuffle(built)
        for name in built:
            runs[name] = session(setting, [*overrides, *VARIANTS["none" if name == CONTROL else name]])
        plain = PlainLoop(runs["row_col"])
        fns: dict[str, Callable[[], Any]] = {name: (lambda r=runs[name]: train_step(r)) for name in (*names, CONTROL)}
        fns["plain_loop"] = plain.step
        for name, times in interleaved(fns, reps, warmup, runs["row_col"].runtime.device).items():
            steps.setdefault(name, []).extend(times)
    return steps, runs


def data_loader_seconds(run: Session, reps: int) -> list[float]:
    """Seconds the trainer's sampler takes to produce one batch (and move it to the device)."""
    device = run.runtime.device

    def batch() -> None:
        x, y = run.sampler.next_batch()
        x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    return [timed(batch, device) for _ in range(reps)]


def folded_copy(run: Session) -> torch.nn.Module:
    """A copy of ``run``'s model with its multipliers folded into the weights: a plain model, the same outputs."""
    folded = build(run.config, run.built.model_config.vocab_size, run.runtime.device).model
    folded.load_state_dict(run.model.state_dict())
    return fold_multipliers(folded)


def multiplier_costs(row_col: Session, none: Session, rounds: int) -> dict[str, Any]:
    """Where the multipliers' share of a training step goes, in milliseconds a step, each part side by side.

    ``forward_backward``: the ``row_col`` model's forward + backward on one batch against the same model object
    with the multipliers' passes bypassed (:func:`~widthwise.app.bench.passes.bypassed`: the same parameters in the
    same memory; the activations, allocated afresh at every call, still land at varying addresses), or under
    ``torch.compile`` (which would recompile for the bypass) against its folded copy (the same weights elsewhere
    in memory); ``update``: the ``row_col`` session's clip, optimizer step and zero-grad against the ``none``
    session's (its 2 x blocks x 7 + 2 more, tiny, parameters); ``isolated`` (eager only): the multipliers' passes
    alone on the model's own weights, caches cold (:func:`~widthwise.app.bench.passes.isolated_passes`).
    """
    device = row_col.runtime.device
    x, y = (t.to(device) for t in row_col.sampler.next_batch())
    compiled = row_col.runtime.compile

    def forward_backward(model: torch.nn.Module) -> Callable[[], None]:
        forward = torch.compile(model) if compiled else model

        def run() -> None:
            with row_col.runtime.autocast():
                loss = forward(x, y)
            loss.backward()
            model.zero_grad(set_to_none=True)
        return run

    with_them = forward_backward(row_col.model)
    if compiled:
        without, against = forward_backward(folded_copy(row_col)), "folded"
    else:
        def without() -> None:
            with bypassed(row_col.model):
                with_them()
        against = "bypassed"
    passes = interleaved({"multipliers": with_them, against: without}, rounds, warmup=2, device=device)
    update: dict[str, list[float]] = {"row_col": [], "none": []}
    for i in range(rounds + 1):
        for name, run in (("row_col", row_col), ("none", none))[:: 1 if i % 2 else -1]:
            with run.runtime.autocast():
                loss = run.model(*(t.to(device) for t in run.sampler.next_batch()))
            loss.backward()
            seconds = timed(lambda r=run: apply_update(r.built, r.config), device)
            if i:  # the first round warms up
                update[name].append(seconds)
    isolated = None if compiled else isolated_passes(row_col.model, x, rounds=ISOLATED_ROUNDS * rounds)
    return {
        "isolated": isolated,
        "forward_backward_ms": round(1e3 * (statistics.median(passes["multipliers"])
                                            - statistics.median(passes[against])), 3),
        "forward_backward_ratio": ratio(passes["multipliers"], passes[against]),
        "forward_backward_against": against,
        "update_ms": round(1e3 * (statistics.median(update["row_col"]) - statistics.median(update["none"])), 3),
        "update_s": {name: median_s(t) for name, t in update.items()},
        "forward_backward_s": {name: median_s(t) for name, t in passes.items()},
    }


#: Rounds of the isolated passes per round of the other multiplier costs (they take milliseconds, not a step).
ISOLATED_ROUNDS = 3


def own_work_share(costs: dict[str, Any], step_s: float) -> float | None:
    """The multipliers' own work as a share of a ``row_col`` step: their forward + backward in place (against the
    same model with them bypassed) plus their update, over the step's median time; ``None`` under compile (there
    the forward + backward is against a folded copy, which carries a placement bias)."""
    if costs["forward_backward_against"] != "bypassed":
        return None
    return round((costs["forward_backward_ms"] + costs["update_ms"]) / (1e3 * step_s), 5)


def inference(row_col: Session, none: Session, reps: int) -> dict[str, Any]:
    """Forward time of the folded model and of the model with multipliers, each against the plain model."""
    device = row_col.runtime.device
    folded = folded_copy(row_col)
    x = row_col.val[0][0].to(device)
    models = {"plain": none.model, "folded": folded, "multipliers": row_col.model}
    compiled = row_col.runtime.compile
    forwards = {name: torch.compile(m) if compiled else m for name, m in models.items()}
    for m in models.values():
        m.eval()

    def forward(name: str) -> Callable[[], Any]:
        def run() -> None:
            with torch.no_grad(), row_col.runtime.autocast():
                forwards[name](x)
        return run

    try:
        times = interleaved({name: forward(name) for name in models}, reps, warmup=2, device=device)
        with torch.no_grad():
            same = bool(torch.allclose(folded(x), row_col.model(x), rtol=1e-4, atol=1e-4))
    finally:
        for m in models.values():
            m.train()
    return {
        "folded_inference_ratio": ratio(times["folded"], times["plain"]),
        "unfolded_inference_ratio": ratio(times["multipliers"], times["plain"]),
        "forward_s": {name: median_s(t) for name, t in times.items()},
        "folded_outputs_match": same,
    }


def spectra_and_diagnostics(run: Session, rounds: int, steps_between: int) -> dict[str, Any]:
    """Power iteration against full SVD, and one diagnostics measurement against the steps it is spread over.

    Rounds alternate: ``steps_between`` training steps, then either the warm-started power iteration (as
    training calls it, the weights having moved since the last call) and the exact singular values (plus,
    the first time, a cold-started power iteration), or one full :class:`TrainingDiagnostics` measurement
    (the trainer's, at its default cadence).
    """
    device = run.runtime.device
    gain_batch = run.val[0][0][: run.config.diagnostics.gain_sequences].to(device)
    monitor = TrainingDiagnostics(run.model, run.optimizer, gain_batch)
    top_singular_values(run.model)  # fill the warm start
    monitor.measure(run.step)  # and the monitor's own (the stored V's): the first measurement of a run is cold
    warm, cold, svd, measure, errors = [], [], [], [], []
    for i in range(2 * rounds):
        for _ in range(steps_between):
            train_step(run)
        if i % 2:
            measure.append(timed(lambda: monitor.measure(run.step), device))
            continue
        sigma: dict[str, float] = {}
        warm.append(timed(lambda out=sigma: out.update(top_singular_values(run.model)), device))
        if not cold:  # cold starts take 10-40 iterations where warm ones take 2-5: once is enough
            cold.append(timed(lambda: top_singular_values(run.model, warm_start=False), device))
        exact: dict[str, torch.Tensor] = {}
        svd.append(timed(lambda out=exact: out.update(singular_values(run.model)), device))
        errors.extend(abs(sigma[n] - float(s[0])) / float(s[0]) for n, s in exact.items() if float(s[0]) > 0)
    return {
        "power_iteration_speedup": round(statistics.median(svd) / statistics.median(warm), 2),
        "power_iteration_cold_speedup": round(statistics.median(svd) / statistics.median(cold), 2),
        "power_iteration_rel_error": max(errors),
        "power_iteration_rel_error_median": statistics.median(errors),
        "power_iteration_s": {"warm": median_s(warm), "cold": median_s(cold), "svd": median_s(svd)},
        "matrices": len(exact),
        "diagnostics_measure_s": median_s(measure),
        "diagnostics_measure_s_range": [median_s([min(measure)]), median_s([max(measure)])],
    }


def multiplier_paths(setting: Setting, ffn: int, reps: int, device: torch.device, dtype: torch.dtype,
                     compiled: bool) -> dict[str, Any]:
    """Forward + backward of one linear layer, plain vs ``row_col`` multipliers on the weight vs on activations.

    On the weight, ``W = diag(r) V diag(c)`` is built once per step (O(d^2)); on the activations,
    ``y = r * (V (c * x))`` costs O(tokens x d). widthwise applies them on the weight; this shows why.
    """
    tokens = setting.batch_size * setting.seq_len
    out: dict[str, Any] = {"tokens": tokens}
    for label, (rows, cols) in {"square": (setting.width, setting.width), "ffn": (ffn, setting.width)}.items():
        fns = _layer_passes(tokens, rows, cols, device, dtype)
        if compiled:
            fns = {k: torch.compile(f) for k, f in fns.items()}
        times = interleaved(fns, reps, warmup=2, device=device)
        out[label] = {"shape": [rows, cols], "weight_vs_plain": ratio(times["weight"], times["plain"])["ratio"],
                      "activations_vs_plain": ratio(times["activations"], times["plain"])["ratio"],
                      "activations_vs_weight": ratio(times["activations"], times["weight"])["ratio"]}
    return out


def _layer_passes(tokens: int, rows: int, cols: int, device: torch.device, dtype: torch.dtype
                  ) -> dict[str, Callable[[], None]]:
    """Forward + backward of a ``rows x cols`` linear layer on ``tokens`` inputs: plain, multipliers on W or on x."""
    x = torch.randn(tokens, cols, device=device, requires_grad=True)
    v = torch.nn.Parameter(torch.randn(rows, cols, device=device) / math.sqrt(cols))
    mult = Multipliers("row_col", v, 0, 1).to(device)
    r, c = mult.row, mult.col
    forwards = {"plain": lambda: F.linear(x, v), "weight": lambda: F.linear(x, mult(v)),
                "activations": lambda: F.linear(x * c, v) * r}

    def backward(forward: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                y = forward()
            y.float().sum().backward()
        return run

    return {name: backward(f) for name, f in forwards.items()}


#: The step ratios measured again at the batch where matmuls dominate (``at_scale``).
AT_SCALE = ("row_col", "none")


def at_scale(setting: Setting, batch_size: int, reps: int, repeats: int, warmup: int,
             overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The multiplier and trainer step ratios at ``batch_size`` sequences a step, where the matmuls dominate the
    step as in real training (the per-step costs that do not grow with the batch, Python and optimizer, are a
    larger share at the small batch of the other figures, their worst case), with their A/A control."""
    big = replace(setting, batch_size=batch_size)
    steps, runs = training_steps(big, AT_SCALE, reps, repeats, warmup, overrides, seed=1)
    step_s = {name: median_s(t) for name, t in steps.items()}
    tokens = batch_size * setting.seq_len
    costs = multiplier_costs(runs["row_col"], runs["none"], max(4, reps))
    result = {
        "tokens_per_step": tokens,
        "multiplier_train_overhead": ratio(steps["row_col"], steps["none"], repeats),
        "trainer_vs_plain_loop": ratio(steps["row_col"], steps["plain_loop"], repeats),
        "control_ratio": ratio(steps[CONTROL], steps["none"], repeats),
        "multiplier_costs": costs,
        "multiplier_own_work": own_work_share(costs, step_s["row_col"]),
        "step_s": step_s, "tokens_per_s": {name: round(tokens / s, 1) for name, s in step_s.items()},
    }
    del runs
    gc.collect()
    return result


def measure_point(setting: Setting, reps: int, warmup: int = 2, rounds: int = 3, steps_between: int = 2,
                  overrides: list[str] | tuple[str, ...] = (), progress: Callable[[str], None] | None = None,
                  repeats: int = 1, scale_batch: int | None = None, scale_reps: int | None = None
                  ) -> dict[str, Any]:
    """Every per-width figure at ``setting``: a JSON-ready dict.

    Training steps run ``repeats`` measurements of ``reps`` interleaved rounds, each on sessions built afresh
    (:func:`training_steps`), each step ratio reported with its spread over the ``repeats``
    (:func:`~widthwise.app.bench.timing.ratio`) beside the A/A control's (``control_ratio``, the noise floor);
    ``scale_batch``: the multiplier and trainer ratios also at that batch (:func:`at_scale`, ``scale_reps`` rounds
    a repeat), when it is larger than the setting's.
    """
    say = progress or (lambda stage: None)
    say("building")
    load_before = load_average()
    say("training steps")
    steps, runs = training_steps(setting, list(VARIANTS), reps, repeats, warmup, overrides)
    row_col, runtime = runs["row_col"], runs["row_col"].runtime
    loader = data_loader_seconds(row_col, reps)
    tokens = setting.batch_size * setting.seq_len
    step_s = {name: median_s(t) for name, t in steps.items()}
    say("multiplier costs")
    costs = multiplier_costs(row_col, runs["none"], reps * repeats)
    say("inference")
    infer = inference(row_col, runs["none"], reps)
    say("spectra and diagnostics")
    spectral = spectra_and_diagnostics(row_col, rounds, steps_between)
    every = DiagnosticsConfig().every  # the trainer's default cadence
    say("multiplier paths")
    paths = multiplier_paths(setting, row_col.built.model_config.ffn_hidden, reps, runtime.device, runtime.dtype,
                             runtime.compile)
    flops = row_col.model.flops_per_token(setting.seq_len) * tokens
    peak, peak_source = peak_flops(runtime.device, runtime.dtype)
    result = {
        "width": setting.width, "mode": setting.label(), "runtime": runtime.describe(),
        "parameters": row_col.model.num_parameters(exclude_embedding=False), "tokens_per_step": tokens,
        "multiplier_train_overhead": ratio(steps["row_col"], steps["none"], repeats),
        "folded_inference_ratio": infer["folded_inference_ratio"],
        "unfolded_inference_ratio": infer["unfolded_inference_ratio"],
        "folded_outputs_match": infer["folded_outputs_match"],
        "muon_vs_adamw": ratio(steps["muon"], steps["row_col"], repeats),
        "muon_ns_dtype": muon_ns_dtype(runs["muon"].optimizer),
        "trainer_vs_plain_loop": ratio(steps["row_col"], steps["plain_loop"], repeats),
        "control_ratio": ratio(steps[CONTROL], steps["none"], repeats),
        "multiplier_costs": costs,
        "multiplier_own_work": own_work_share(costs, step_s["row_col"]),
        "diagnostics_overhead": round(1 + spectral["diagnostics_measure_s"] / (every * step_s["row_col"]), 5),
        "diagnostics_every": every,
        "diagnostics_overhead_range": [round(1 + t / (every * step_s["row_col"]), 5)
                                       for t in spectral["diagnostics_measure_s_range"]],
        **spectral,
        "step_s": step_s,
        "forward_s": infer["forward_s"],
        "tokens_per_s": {name: round(tokens / s, 1) for name, s in step_s.items()},
        "data_loader_s": median_s(loader),
        "data_loader_share": round(statistics.median(loader) / step_s["row_col"], 5),
        "mfu": round(flops / step_s["row_col"] / peak, 4) if peak else None,
        "achieved_tflops": round(flops / step_s["row_col"] / 1e12, 4),
        "peak_tflops": round(peak / 1e12, 4) if peak else None, "peak_source": peak_source,
        "multiplier_paths": paths,
        "load_average_before": load_before,
    }
    del runs, row_col
    gc.collect()
    if scale_batch is not None and scale_batch > setting.batch_size:
        say("training steps at scale")
        # one untimed step per fresh session: at scale a step is long enough to average its own noise out
        result["at_scale"] = at_scale(setting, scale_batch, scale_reps or reps, repeats, 1, overrides)
    result["load_average_after"] = load_average()
    return result


def muon_optimizer(run: Session, reps: int) -> dict[str, Any]:
    """Muon's step alone on the first block's hidden matrices: ``torch.optim.Muon`` against :class:`BatchedMuon`.

    Same gradients, same hyperparameters. ``BatchedMuon`` in bf16 gives bit-identical parameters to torch's
    (one batched Newton-Schulz per shape instead of a Python loop); ``auto`` also picks fp32 Newton-Schulz
    where bf16 matmuls are slow (CPUs without bf16 units).
    """
    muon = run.optimizer.optimizers["muon"]
    group = muon.param_groups[0]
    first = [p for g in muon.param_groups for p, n in zip(g["params"], g["names"], strict=True)
             if n.startswith("blocks.0.")]
    generator = torch.Generator().manual_seed(0)
    grads = [torch.randn(p.shape, generator=generator).to(p.device) for p in first]
    settings = {"lr": group["lr"], "weight_decay": group["weight_decay"], "momentum": group["momentum"],
                "nesterov": group["nesterov"], "adjust_lr_fn": group["adjust_lr_fn"]}
    optimizers = {"torch": lambda ps: torch.optim.Muon(ps, **settings),
                  "batched_bf16": lambda ps: BatchedMuon(ps, ns_dtype="bfloat16", **settings),
                  "batched_auto": lambda ps: BatchedMuon(ps, ns_dtype="auto", **settings)}
    steps, params = {}, {}
    for name, make in optimizers.items():
        ps = [torch.nn.Parameter(p.detach().clone()) for p in first]
        for p, g in zip(ps, grads, strict=True):
            p.grad = g.clone()
        opt = make(ps)
        steps[name], params[name] = opt.step, ps
    times = interleaved(steps, reps, warmup=1, device=run.runtime.device)
    identical = all(torch.equal(a, b) for a, b in zip(params["torch"], params["batched_bf16"], strict=True))
    return {
        "matrices": [list(p.shape) for p in first],
        "step_s": {name: median_s(t) for name, t in times.items()},
        "batched_bf16_speedup": round(statistics.median(times["torch"]) / statistics.median(times["batched_bf16"]), 3),
        "batched_auto_speedup": round(statistics.median(times["torch"]) / statistics.median(times["batched_auto"]), 3),
        "auto_ns_dtype": BatchedMuon([torch.nn.Parameter(first[0].detach().clone())], ns_dtype="auto",
                                     **settings).param_groups[0]["ns_dtype"],
        "bf16_bit_identical_to_torch": identical,
    }
