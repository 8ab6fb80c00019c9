"""The coordinate check: how the size of activations changes with width over the first few training steps.

For each recipe, width and seed, the reference LLaMA is built at that width (base width: the smallest one),
trained a few steps on real text, and at initialisation and after every step the mean absolute coordinate
(``mean(|x|)``, the measure of microsoft/mup's coordinate check, Yang et al. 2022, arXiv 2203.03466) of its
activations on one fixed batch is recorded per layer type: the embedding output, each block's attention and
MLP outputs (pooled over blocks), the last hidden state (the final norm's input) and the logits (after the
head multiplier). A width-robust recipe keeps them flat in width; the standard parametrization (``sp``) lets
them grow after a few steps of Adam, because each step changes a ``d``-wide dot product by ``~ lr * d``.

Activation size alone can pass while transfer fails, so the check also records the top singular value of
every matrix (``sigma_max``, Fan et al. 2025, arXiv 2510.15262) and the sublayer gains ``rms(Wx)/rms(x)``,
pooled per layer type. Only activations decide the verdict; the spectral measures are shown and fitted.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..diagnostics.gains import gain_summary, sublayer_gains
from ..diagnostics.naming import block_index, pool_by_layer_type
from ..diagnostics.spectra import top_singular_values
from ..errors import ConfigError
from ..planning import WidthConstantMultipliersWarning
from ..recipes import PRESETS
from ..tables import format_table
from . import defaults
from .analysis.fits import fit_line
from .atomic import atomic_savefig, atomic_write_text
from .config import Config, apply_overrides, load_config
from .data import BatchSampler, TokenData, validation_batches
from .plotting import colormap, subplots
from .setup import Built, apply_update, build, config_device, head_dim, heads_at, load_data, load_recipe, model_configs

#: Activation measures (mean |coordinate|); these decide the verdict.
ACTIVATIONS = ("embed_out", "attn_out", "mlp_out", "last_hidden", "logits")
#: Defaults of ``widthwise coord-check`` (measured: see :mod:`widthwise.app.defaults`).
DEFAULT_WIDTHS = defaults.COORD_CHECK_WIDTHS
DEFAULT_RECIPES = defaults.COORD_CHECK_RECIPES
DEFAULT_STEPS = defaults.COORD_CHECK_STEPS
DEFAULT_CONFIG = defaults.COORD_CHECK_CONFIG
DEFAULT_LR = defaults.COORD_CHECK_LR
#: A slope of log(mean |x|) against log(width) beyond this is growth (or shrinkage): 0.3 is 23% per doubling
#: of the width. Measured ``sp`` slopes are >= 1.1 in the block outputs, ``mup``/``robust`` within +-0.16.
DEFAULT_THRESHOLD = 0.3
LOSS = "train_loss"
SIGMA = "sigma_max/"
GAIN = "gain/"
#: Rows of :meth:`CoordCheck.plot`, in order, where recorded.
PLOT_ROWS = ("embed_out", "attn_out", "mlp_out", "logits", f"{SIGMA}hidden", f"{GAIN}matrix_mean")
_TITLES = {"embed_out": "embedding output", "attn_out": "attention output (mean over blocks)",
           "mlp_out": "MLP output (mean over blocks)", "last_hidden": "last hidden state", "logits": "logits",
           f"{SIGMA}hidden": "top singular value, hidden matrices",
           f"{GAIN}matrix_mean": "sublayer gain rms(Wx)/rms(x), hidden mean"}
#: Config keys the check sets itself, with what sets them (``--set`` of these is refused, not ignored).
CONTROLLED_KEYS = {"scaling.recipe": "--recipes", "scaling.base_width": "the smallest of --widths",
                   "train.steps": "--steps", "schedule.kind": "a constant LR", "schedule.warmup": "no warmup"}

#: Column labels of :meth:`CoordCheck.table`.
_SHORT = {"embed_out": "embed", "attn_out": "attn", "mlp_out": "mlp", "last_hidden": "last_h",
          "logits": "logits", f"{SIGMA}hidden": "sigma_max", f"{GAIN}matrix_mean": "gain"}


# -- the grid ------------------------------------------------------------------------------------------------
def default_config(overrides: Sequence[str] = ()) -> Config:
    """The check's default: built-in ``tiny`` at ``optim.lr = DEFAULT_LR`` on one thread, then ``overrides``.

    One thread: these models are too small to gain from a second, and on a shared CPU two threads measured
    6-20x slower than one (OpenMP workers waiting on a busy core).
    """
    return load_config(DEFAULT_CONFIG, [f"optim.lr={DEFAULT_LR}", "train.threads=1", *overrides])


def check_overrides(overrides: Sequence[str]) -> None:
    """Refuse ``--set`` overrides of keys the check sets itself (:data:`CONTROLLED_KEYS`)."""
    for text in overrides:
        key = text.partition("=")[0].strip()
        if key in CONTROLLED_KEYS:
            raise ConfigError(f"--set {key}: the coordinate check sets it ({CONTROLLED_KEYS[key]})")


def width_config(config: Config, width: int, base_width: int, recipe: str, steps: int, lr: float | None = None,
                 seed: int | None = None) -> Config:
    """``config`` at ``width`` with the recipe, base width and a constant LR (no warmup) for ``steps`` steps."""
    heads, kv_heads = heads_at(config, width)
    overrides: dict[str, Any] = {
        "model.width": width, "model.heads": heads, "model.kv_heads": kv_heads, "scaling.base_width": base_width,
        "scaling.recipe": recipe, "schedule.kind": "constant", "schedule.warmup": 0, "train.steps": steps,
    }
    if seed is not None:
        overrides["train.seed"] = seed
    if lr is not None:
        overrides["optim.lr"] = lr
    return apply_overrides(config, overrides)


def check_grid(config: Config, widths: Sequence[int], recipes: Sequence[str], steps: int,
               seeds: Sequence[int]) -> list[int]:
    """The sorted widths, after checking every width, recipe, step count and seed; ``ConfigError`` otherwise.

    Messages start with the name of the argument at fault (``widths: ...``), so a caller can add its own spelling.
    """
    for name, values in (("widths", widths), ("steps", [steps]), ("seeds", seeds)):
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "seeds" else 1):
                raise ConfigError(f"{name}: expected {'non-negative' if name == 'seeds' else 'positive'} "
                                  f"integers, got {v!r}")
    ordered = sorted(set(widths))
    if len(ordered) < 2:
        raise ConfigError(f"widths: need at least 2 different widths to fit a slope, got {list(widths)}")
    if not seeds:
        raise ConfigError("seeds: need at least one seed")
    if not recipes:
        raise ConfigError("recipes: need at least one recipe")
    for recipe in recipes:
        if recipe not in PRESETS and not str(recipe).endswith((".yaml", ".yml", ".json")):
            raise ConfigError(f"recipes: unknown recipe {recipe!r}; expected {', '.join(PRESETS)} or a "
                              "recipe file (.yaml/.json)")
    dh = head_dim(config)
    for width in ordered:
        if width % dh:
            raise ConfigError(f"widths: {width} is not a multiple of the head dim {dh} (model.width / "
                              "model.heads of the config)")
        for recipe in recipes:
            try:
                cfg = width_config(config, width, ordered[0], recipe, steps)
                model_configs(cfg, 257, load_recipe(cfg))
            except ConfigError as err:
                raise ConfigError(f"widths: width {width}: {err}") from None
    return ordered


# -- measuring -----------------------------------------------------------------------------------------------
def _l1(t: torch.Tensor) -> float:
    return float(t.detach().float().abs().mean())


@contextlib.contextmanager
def _hooks(model: nn.Module, sink: dict[str, list[float]]) -> Iterator[None]:
    """Record mean |x| of the embedding output, each block's attn/mlp output and the final norm's input."""
    def out(key: str) -> Callable:
        return lambda module, args, output: sink.setdefault(key, []).append(_l1(output))

    def inp(key: str) -> Callable:
        return lambda module, args: sink.setdefault(key, []).append(_l1(args[0]))

    handles = [model.blocks[0].register_forward_pre_hook(inp("embed_out")),
               model.norm.register_forward_pre_hook(inp("last_hidden"))]
    for block in model.blocks:
        handles += [block.attn.register_forward_hook(out("attn_out")), block.mlp.register_forward_hook(out("mlp_out"))]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def activation_sizes(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Mean |coordinate| per activation type of the reference LLaMA on token ids ``x`` (blocks pooled by mean)."""
    sink: dict[str, list[float]] = {}
    with _hooks(model, sink):
        logits = model(x)
    sink["logits"] = [_l1(logits)]
    return {key: statistics.fmean(sink[key]) for key in ACTIVATIONS}


def spectral_measures(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """``sigma_max/<layer type>`` (mean over blocks), ``sigma_max/hidden`` and ``gain/<key>`` of the gain summary."""
    sigmas = top_singular_values(model, which="effective")
    hidden = [v for name, v in sigmas.items() if block_index(name) is not None and math.isfinite(v)]
    result = {f"{SIGMA}{k}": v for k, v in pool_by_layer_type(sigmas).items()}
    if hidden:
        result[f"{SIGMA}hidden"] = statistics.fmean(hidden)
    with torch.no_grad():
        summary = gain_summary(sublayer_gains(model, x))
    result.update({f"{GAIN}{k}": float(v) for k, v in summary.items() if isinstance(v, (int, float))})
    return result


def measure(model: nn.Module, x: torch.Tensor, spectral: bool = True) -> dict[str, float]:
    """Every measure of the check on the fixed batch ``x``."""
    model.eval()
    values = activation_sizes(model, x)
    if spectral:
        values.update(spectral_measures(model, x))
    model.train()
    return values


# -- training ------------------------------------------------------------------------------------------------
def _train_step(built: Built, config: Config, x: torch.Tensor, y: torch.Tensor) -> float:
    loss = built.model(x, y)
    loss.backward()
    apply_update(built, config)
    return float(loss.detach())


Batch = tuple[torch.Tensor, torch.Tensor]


def _run(config: Config, vocab: int, device: torch.device, batches: list[Batch], probe: torch.Tensor,
         spectral: bool, tick: Callable[[], None]) -> list[tuple[int, str, float]]:
    """Train one model ``len(batches)`` steps: ``(step, measure, value)`` at init and after every step."""
    with warnings.catch_warnings():  # the check runs sp across widths on purpose: it is the control
        warnings.simplefilter("ignore", WidthConstantMultipliersWarning)
        built = build(config, vocab, device)
    rows = [(0, k, v) for k, v in measure(built.model, probe, spectral).items()]
    for step, (x, y) in enumerate(batches, start=1):
        loss = _train_step(built, config, x.to(device), y.to(device))
        rows.append((step, LOSS, loss))
        rows += [(step, k, v) for k, v in measure(built.model, probe, spectral).items()]
        tick()
    return rows


@contextlib.contextmanager
def _threads(threads: int | None) -> Iterator[None]:
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def coord_check(
    config: Config | None = None,
    widths: Sequence[int] = DEFAULT_WIDTHS,
    *,
    recipes: Sequence[str] = DEFAULT_RECIPES,
    steps: int = DEFAULT_STEPS,
    seeds: Sequence[int] = (0,),
    lr: float | None = None,
    progress: bool = True,
    spectral: bool = True,
) -> CoordCheck:
    """Train every (recipe, width, seed) ``steps`` steps and record the measures at init and after each step.

    ``config`` defaults to :func:`default_config`. At each width the model is ``config``'s with the same head
    dim and GQA ratio, base width the smallest width, ``scaling.recipe`` the recipe, ``optim.lr = lr`` when
    given (else the config's) and a constant LR from the first step. All models of a seed see the same training
    batches of the config's data (bundled Shakespeare by default), are measured on one fixed validation batch
    and are initialised with ``train.seed`` = the seed. fp32, eager, on ``train.device``; the global RNG state
    is left as it was. ``spectral=False`` skips ``sigma_max`` and the sublayer gains.
    """
    config = default_config() if config is None else config
    ordered = check_grid(config, list(widths), list(recipes), steps, list(seeds))
    data, device, probe = _inputs(config)
    vocab = max(config.model.vocab_size or 0, data.vocab_size)
    t = config.train
    records: list[dict[str, Any]] = []
    started = time.perf_counter()
    bar = tqdm(total=len(recipes) * len(ordered) * len(seeds) * steps, disable=not progress or None, unit="step",
               desc="coord-check", file=sys.stderr, dynamic_ncols=True)
    with bar, torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), _threads(t.threads):
        for seed in seeds:
            sampler = BatchSampler(data.train, t.batch_size, t.seq_len, seed)
            batches = [sampler.next_batch() for _ in range(steps)]
            for recipe, width in itertools.product(recipes, ordered):
                bar.set_postfix(recipe=recipe, width=width, seed=seed, refresh=True)
                cfg = width_config(config, width, ordered[0], recipe, steps, lr, seed)
                for step, name, value in _run(cfg, vocab, device, batches, probe, spectral, lambda: bar.update(1)):
                    records.append({"recipe": recipe, "width": width, "seed": seed, "step": step, "measure": name,
                                    "value": value})
    return CoordCheck(records, ordered, list(recipes), steps, list(seeds), config.optim.lr if lr is None else lr,
                      wall_s=round(time.perf_counter() - started, 2), meta={"config": config.to_dict()})


def _inputs(config: Config) -> tuple[TokenData, torch.device, torch.Tensor]:
    """The config's token data, its device and the fixed probe batch (the first validation batch's inputs)."""
    t = config.train
    data, device = load_data(config), config_device(config)
    probe = validation_batches(data.val, t.batch_size, t.seq_len, t.batch_size * t.seq_len)[0][0]
    return data, device, probe.to(device)


# -- results -------------------------------------------------------------------------------------------------
def fit_slope(widths: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of ``log(value)`` against ``log(width)``; ``inf`` if a value is not finite or <= 0."""
    if any(not math.isfinite(v) or v <= 0 for v in values):
        return math.inf
    return fit_line([math.log(w) for w in widths], [math.log(v) for v in values]).slope


def _finite_or_none(value: float) -> float | None:
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


@dataclass
class CoordCheck:
    """Records ``{recipe, width, seed, step, measure, value}`` of :func:`coord_check`, with fits and a verdict."""

    records: list[dict[str, Any]]
    widths: list[int]
    recipes: list[str]
    steps: int
    seeds: list[int]
    lr: float
    wall_s: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    def measures(self) -> list[str]:
        """Measure names in record order, loss excluded."""
        return list(dict.fromkeys(r["measure"] for r in self.records if r["measure"] != LOSS))

    def values(self, recipe: str, measure: str, step: int) -> dict[int, float]:
        """``{width: value}`` at ``step``, the geometric mean over seeds (``nan`` where any seed has none)."""
        by_width: dict[int, list[float]] = {}
        for r in self.records:
            if r["recipe"] == recipe and r["measure"] == measure and r["step"] == step:
                by_width.setdefault(r["width"], []).append(r["value"])
        result = {}
        for width, vals in sorted(by_width.items()):
            ok = all(v is not None and math.isfinite(v) and v > 0 for v in vals) and len(vals) == len(self.seeds)
            result[width] = math.exp(statistics.fmean(math.log(v) for v in vals)) if ok else math.nan
        return result

    def slopes(self, step: int | None = None) -> dict[str, dict[str, float]]:
        """``{recipe: {measure: slope}}``: d log(value) / d log(width) at ``step`` (default: the last), mean over seeds.

        The mean over seeds of per-seed slopes equals the slope of the seeds' geometric mean, fitted here.
        """
        step = self.steps if step is None else step
        out: dict[str, dict[str, float]] = {}
        for recipe in self.recipes:
            out[recipe] = {}
            for m in self.measures():
                vals = self.values(recipe, m, step)
                if len(vals) >= 2:
                    out[recipe][m] = fit_slope(list(vals), list(vals.values()))
        return out

    def verdict(self, threshold: float = DEFAULT_THRESHOLD) -> dict[str, dict[str, Any]]:
        """Per recipe: ``flat`` when no activation slope exceeds ``threshold`` in size, else ``grows``/``shrinks``.

        ``passes`` is true unless an activation grows; ``worst`` lists the activation measures by |slope|.
        """
        result = {}
        for recipe, slopes in self.slopes().items():
            acts = {m: s for m, s in slopes.items() if m in ACTIVATIONS}
            worst = sorted(acts, key=lambda m: -abs(acts[m]))
            grows = [m for m in worst if acts[m] > threshold]
            shrinks = [m for m in worst if acts[m] < -threshold]
            label = "grows" if grows else "shrinks" if shrinks else "flat"
            result[recipe] = {"verdict": label, "passes": not grows, "threshold": threshold,
                              "worst": [[m, _finite_or_none(acts[m])] for m in (grows or shrinks or worst)[:3]]}
        return result

    def losses(self) -> dict[str, dict[int, float]]:
        """``{recipe: {width: final train loss}}`` (mean over seeds)."""
        groups: dict[tuple[str, int], list[float]] = {}
        for r in self.records:
            if r["measure"] == LOSS and r["step"] == self.steps:
                groups.setdefault((r["recipe"], r["width"]), []).append(r["value"])
        out: dict[str, dict[int, float]] = {}
        for (recipe, width), vals in groups.items():
            out.setdefault(recipe, {})[width] = statistics.fmean(vals)
        return out

    def to_dict(self, threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any]:
        """JSON-ready: settings, slopes, verdict, final losses and every record (non-finite values as null)."""
        slopes = {r: {m: _finite_or_none(s) for m, s in d.items()} for r, d in self.slopes().items()}
        return {
            "widths": self.widths, "recipes": self.recipes, "steps": self.steps, "seeds": self.seeds, "lr": self.lr,
            "wall_s": self.wall_s, **self.meta, "slopes": slopes, "verdict": self.verdict(threshold),
            "final_train_loss": self.losses(),
            "records": [{**r, "value": _finite_or_none(r["value"])} for r in self.records],
        }

    def save(self, path: str | Path, threshold: float = DEFAULT_THRESHOLD) -> Path:
        """Write :meth:`to_dict` as JSON to ``path``."""
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(threshold), indent=1) + "\n")
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CoordCheck:
        """A :class:`CoordCheck` back from :meth:`to_dict` (null values become ``nan``)."""
        records = [{**r, "value": math.nan if r["value"] is None else r["value"]} for r in data["records"]]
        meta = {"config": data["config"]} if "config" in data else {}
        return cls(records, data["widths"], data["recipes"], data["steps"], data["seeds"], data["lr"],
                   data.get("wall_s", 0.0), meta)

    def table(self, threshold: float = DEFAULT_THRESHOLD) -> str:
        """Slopes of the activation measures per recipe, with the verdict: a short text table."""
        slopes, verdict = self.slopes(), self.verdict(threshold)
        cols = [c for c in _SHORT if c in ACTIVATIONS or c in self.measures()]
        rows = [[recipe, *(f"{slopes[recipe].get(c, math.nan):+.2f}" for c in cols),
                 f"{verdict[recipe]['verdict']}{'' if verdict[recipe]['passes'] else ' (fails)'}"]
                for recipe in self.recipes]
        text = format_table(rows, header=["recipe", *(_SHORT[c] for c in cols), "verdict"])
        if len(cols) > len(ACTIVATIONS):
            text += "\n(verdict from the activations; sigma_max and gain: means over the hidden matrices)"
        return text

    def plot(self, path: str | Path) -> Path:
        """A grid of value against width (log-log), rows: key measures, columns: recipes, one line per step."""
        return plot_coord_check(self, Path(path))


def plot_coord_check(check: CoordCheck, path: Path) -> Path:
    """Draw :meth:`CoordCheck.plot`: x = width (log2), y = value (log), lines coloured by step (viridis)."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    present = check.measures()
    rows = [m for m in PLOT_ROWS if m in present]
    slopes = check.slopes()
    cmap, norm = colormap("viridis"), Normalize(0, max(check.steps, 1))
    fig, axes = subplots(len(rows), len(check.recipes), figsize=(3.6 * len(check.recipes) + 1, 2.6 * len(rows)),
                             sharex=True, sharey="row", squeeze=False)
    for i, m in enumerate(rows):
        for j, recipe in enumerate(check.recipes):
            ax = axes[i][j]
            for step in range(check.steps + 1):
                vals = check.values(recipe, m, step)
                ax.plot(list(vals), list(vals.values()), "o-", ms=3, lw=1.2, color=cmap(norm(step)))
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.grid(alpha=0.3, which="both")
            slope = slopes[recipe].get(m, math.nan)
            ax.set_title(f"{_TITLES.get(m, m)}\nslope {slope:+.2f} at step {check.steps}", fontsize=9)
            if i == 0:
                ax.annotate(recipe, (0.5, 1.3), xycoords="axes fraction", ha="center", fontsize=13, weight="bold")
            if j == 0:
                ax.set_ylabel("mean |x|" if m in ACTIVATIONS else m.split("/")[0])
            if i == len(rows) - 1:
                ax.set_xlabel("width")
    ax_ticks = axes[-1][0]
    ax_ticks.set_xticks(check.widths, [str(w) for w in check.widths])
    fig.suptitle(f"coordinate check: {check.steps} steps at lr {check.lr:g} (base width {check.widths[0]}); "
                 "flat lines = width-robust", fontsize=11)
    fig.tight_layout(rect=(0, 0, 0.93, 0.97))
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, fraction=0.02, pad=0.02)
    bar.set_label("step (0 = init)")
    atomic_savefig(fig, path, dpi=110)
    return path
