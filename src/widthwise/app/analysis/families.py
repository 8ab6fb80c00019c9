"""A sweep's rows grouped for analysis: *families* (everything but width, LR, WD and seed) of *cells*
``(width, lr, weight_decay)`` whose seeds are averaged, the hidden matrices' LR/WD and relaxation times, and
positions on a log-spaced grid."""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...diagnostics.equilibrium import relaxation_steps
from ...recipes import Recipe, get_recipe
from ...rules import DEFAULT_MUON_ADJUST_LR_FN
from ..config import config_keys

#: Config keys that place a run inside a family (axes of the analysis) rather than define the family.
AXIS_KEYS = config_keys("width", "tuned", "seed")
#: Config keys already named in a family label through the row's resolved ``recipe``/``optimizer``/``multipliers``.
NAMED_KEYS = config_keys("family")

Key = tuple[int, float, float]


@dataclass
class Cell:
    """One grid point ``(width, lr, weight_decay)`` of a family, its seeds pooled.

    ``val_loss`` is the mean over the completed seeds, ``None`` when none completed or any seed diverged (a
    completed run with a non-finite loss counts as diverged). ``sigma_max``/``gain`` are seed means too; ``losses``
    the completed seeds' losses (empty when the point diverged); ``relaxation_times`` the fewest relaxation times
    ``1/(lr*wd)`` of the hidden matrices a completed seed covered (:func:`row_relaxation_times`)."""

    width: int
    lr: float
    weight_decay: float
    runs: int = 0
    completed: int = 0
    diverged: int = 0
    failed: int = 0
    val_loss: float | None = None
    sigma_max: float | None = None
    gain: float | None = None
    run_id: str | None = None
    run_dir: str | None = None  # relative to the sweep directory: runs/<name>
    losses: list[float] = field(default_factory=list)
    relaxation_times: float | None = None

    @property
    def seed_std(self) -> float | None:
        """Standard deviation over the seeds of the loss (``None`` without two completed seeds)."""
        return statistics.stdev(self.losses) if len(self.losses) > 1 else None

    @property
    def status(self) -> str:
        """``ok`` (has a loss), ``diverged``, ``failed`` or ``pending`` (nothing finished yet)."""
        if self.diverged:
            return "diverged"
        if self.val_loss is not None:
            return "ok"
        return "failed" if self.failed else "pending"


@dataclass
class Family:
    """Rows sharing everything but width, LR, WD and seed; ``cells`` maps ``(width, lr, wd)`` to a :class:`Cell`."""

    label: str
    params: dict[str, Any]
    recipe: str
    optimizer: str
    multipliers: str
    base_width: int | None
    hidden: HiddenScaling | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    cells: dict[Key, Cell] = field(default_factory=dict)

    @property
    def widths(self) -> list[int]:
        return sorted({k[0] for k in self.cells})

    @property
    def lr_grid(self) -> list[float]:
        return sorted({k[1] for k in self.cells})

    @property
    def wd_grid(self) -> list[float]:
        return sorted({k[2] for k in self.cells})

    def loss_grid(self, width: int) -> np.ndarray:
        """Seed-mean validation loss at ``width`` as an array ``[wd index, lr index]``, NaN where there is none."""
        lrs, wds = self.lr_grid, self.wd_grid
        grid = np.full((len(wds), len(lrs)), np.nan)
        for j, wd in enumerate(wds):
            for i, lr in enumerate(lrs):
                cell = self.cells.get((width, lr, wd))
                if cell is not None and cell.val_loss is not None:
                    grid[j, i] = cell.val_loss
        return grid

    def status_grid(self, width: int) -> list[list[str]]:
        """:attr:`Cell.status` at ``width`` as ``[wd index][lr index]`` (``missing`` where the grid has no run)."""
        return [[self.cells[(width, lr, wd)].status if (width, lr, wd) in self.cells else "missing"
                 for lr in self.lr_grid] for wd in self.wd_grid]


@dataclass(frozen=True)
class HiddenScaling:
    """How the plan turns base values into the hidden matrices' LR and WD at a width: ``lr = base_lr * m^-lr_exponent``,
    ``wd = base_wd * m^wd_exponent``, ``m = width / base_width`` (:meth:`widthwise.recipes.Recipe.exponents` for the
    family's optimizer). ``fixed_lr``: Muon's ``optim.muon_lr``, the hidden base LR whatever ``optim.lr`` is."""

    lr_exponent: float
    wd_exponent: float
    base_width: int
    fixed_lr: float | None = None

    def at(self, lr: float, weight_decay: float, width: int) -> tuple[float, float]:
        """``(lr, wd)`` of the hidden matrices at ``width`` for base values ``lr``, ``weight_decay``."""
        m = width / self.base_width
        return (self.fixed_lr or lr) * m ** -self.lr_exponent, weight_decay * m ** self.wd_exponent


def hidden_scaling(row: Mapping[str, Any]) -> HiddenScaling | None:
    """The :class:`HiddenScaling` of a results row, from its config (``scaling.recipe`` with ``scaling.overrides``,
    ``optim``) or, without one, its ``recipe``/``optimizer`` columns; ``None`` when the recipe cannot be loaded (a
    recipe file that is gone) or the row has no width."""
    config = row.get("config") or {}
    scaling, optim = config.get("scaling") or {}, config.get("optim") or {}
    width = row.get("width") or (config.get("model") or {}).get("width")
    base_width = row.get("base_width") or scaling.get("base_width") or width
    optimizer = str(optim.get("name") or row.get("optimizer") or "adamw")
    try:
        recipe = _recipe(str(scaling.get("recipe") or row.get("recipe")), scaling.get("overrides") or {}, config)
        e_lr, e_wd = recipe.exponents(optimizer, optim.get("adjust_lr_fn", DEFAULT_MUON_ADJUST_LR_FN))
    except (ValueError, TypeError):
        return None
    if not base_width:
        return None
    fixed = optim.get("muon_lr") if optimizer == "muon" else None
    return HiddenScaling(e_lr, e_wd, int(base_width), float(fixed) if is_finite(fixed) else None)


def _recipe(name: str, overrides: Mapping[str, Any], config: Mapping[str, Any]) -> Recipe:
    if not name.endswith((".yaml", ".yml", ".json")):
        return get_recipe(name, **overrides)
    from ...errors import ConfigError
    from ..config import from_dict
    from ..setup import load_recipe

    try:
        return load_recipe(from_dict(dict(config)))
    except ConfigError as err:
        raise ValueError(str(err)) from None


def row_relaxation_times(row: Mapping[str, Any], hidden: HiddenScaling | None) -> float | None:
    """Relaxation times ``1/(lr*wd)`` of the hidden matrices a row's run covered: its ``relaxation_times`` column
    when the results have one, else ``(steps - warmup / 2) * lr * wd`` with the hidden matrices' LR and WD at the
    row's width (warmup counts half, as in :func:`widthwise.app.calibrate.relaxation_times`); ``None`` when neither is
    known. The equilibrium is reached after about one relaxation time (Kosson et al., arXiv 2305.17212)."""
    if is_finite(row.get("relaxation_times")):
        return float(row["relaxation_times"])
    config = row.get("config") or {}
    steps = row.get("steps") if is_finite(row.get("steps")) else (config.get("train") or {}).get("steps")
    if hidden is None or not is_finite(steps) or not is_finite(row.get("lr")) or not row.get("width"):
        return None
    warmup = (config.get("schedule") or {}).get("warmup") or 0
    lr, wd = hidden.at(float(row["lr"]), float(row["weight_decay"]), int(row["width"]))
    return max(0.0, float(steps) - warmup / 2) / relaxation_steps(lr, wd)


# ----------------------------------------------------------------------------------------------- grouping


def is_finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def finite_or_none(x: Any) -> float | None:
    """``x`` as a float, ``None`` when missing or not finite (JSON has no NaN)."""
    return float(x) if is_finite(x) else None


def grid_value(x: Any) -> float:
    """A grid coordinate with float noise removed (``0.1 * 3`` and ``0.3`` are the same grid value)."""
    return float(f"{float(x):.10g}")


def show_value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def family_params(row: Mapping[str, Any]) -> dict[str, Any]:
    """The grid values that define ``row``'s family: its varied ``params`` other than width, LR, WD and seed."""
    return {k: v for k, v in sorted(row.get("params", {}).items()) if k not in AXIS_KEYS}


def family_label(row: Mapping[str, Any]) -> str:
    """``recipe=R optimizer=O multipliers=M`` plus `` key=value`` for every other family-defining grid key."""
    parts = [f"{name}={row.get(name)}" for name in ("recipe", "optimizer", "multipliers")]
    parts += [f"{k}={show_value(v)}" for k, v in family_params(row).items() if k not in NAMED_KEYS]
    return " ".join(parts)


def aggregate_cells(rows: Iterable[Mapping[str, Any]], hidden: HiddenScaling | None = None) -> dict[Key, Cell]:
    """Pool rows into cells ``(width, lr, weight_decay)``: count statuses, average losses and diagnostics over seeds
    (``hidden``: the family's scaling, for the relaxation times of rows without the column)."""
    pooled: dict[Key, list[Mapping[str, Any]]] = {}
    for row in rows:
        pooled.setdefault(_cell_key(row), []).append(row)
    return {key: _cell(key, group, hidden) for key, group in sorted(pooled.items())}


def _cell_key(row: Mapping[str, Any]) -> Key:
    width = row.get("width") or row.get("params", {}).get("model.width")
    return int(width), grid_value(row["lr"]), grid_value(row["weight_decay"])


def _cell(key: Key, rows: list[Mapping[str, Any]], hidden: HiddenScaling | None) -> Cell:
    cell = Cell(*key, runs=len(rows))
    done = []
    for row in sorted(rows, key=lambda r: (r.get("seed") or 0)):
        status = row.get("status")
        if status == "diverged" or (status == "completed" and not is_finite(row.get("val_loss"))):
            cell.diverged += 1
        elif status == "completed":
            done.append(row)
        elif status == "failed":
            cell.failed += 1
    cell.completed = len(done)
    if done and not cell.diverged:
        cell.losses = [float(r["val_loss"]) for r in done]
        cell.val_loss = statistics.fmean(cell.losses)
        cell.run_id = done[0].get("run_id")
        cell.run_dir = f"runs/{done[0]['name']}" if done[0].get("name") else None
    cell.sigma_max = _mean(r.get("sigma_max") for r in done)
    cell.gain = _mean(r.get("gain") for r in done)
    relax = [t for t in (row_relaxation_times(r, hidden) for r in done) if t is not None]
    cell.relaxation_times = min(relax) if relax else None
    return cell


def _mean(values: Iterable[Any]) -> float | None:
    finite = [float(v) for v in values if is_finite(v)]
    return statistics.fmean(finite) if finite else None


def group_families(rows: Iterable[Mapping[str, Any]]) -> list[Family]:
    """Split the sweep's rows into families (sorted by label), each with its cells."""
    families: dict[str, Family] = {}
    for row in rows:
        label = family_label(row)
        if label not in families:
            families[label] = Family(label, family_params(row), str(row.get("recipe")), str(row.get("optimizer")),
                                     str(row.get("multipliers")), row.get("base_width"), hidden_scaling(row))
        families[label].rows.append(dict(row))
    for family in families.values():
        family.cells = aggregate_cells(family.rows, family.hidden)
    return [families[k] for k in sorted(families)]


def grid_ratio(values: Sequence[float]) -> float | None:
    """Median ratio of consecutive sorted positive grid values (``None`` for fewer than two)."""
    values = sorted(v for v in values if v > 0)
    if len(values) < 2:
        return None
    return float(statistics.median(b / a for a, b in itertools.pairwise(values)))


def log_position(value: float, grid: Sequence[float]) -> float:
    """``log(value)`` in units of the grid's median step; a value of 0 (a WD grid may hold 0) sits one step below
    the smallest positive grid value."""
    step = math.log(grid_ratio(grid) or math.e)
    if value > 0:
        return math.log(value) / step
    smallest = min((v for v in grid if v > 0), default=1.0)
    return math.log(smallest) / step - 1.0
