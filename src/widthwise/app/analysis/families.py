"""A sweep's rows grouped for analysis: *families* (everything but width, LR, WD and seed) of *cells*
``(width, lr, weight_decay)`` whose seeds are averaged, and positions on a log-spaced grid."""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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
    completed run with a non-finite loss counts as diverged). ``sigma_max``/``gain`` are seed means too."""

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


def aggregate_cells(rows: Iterable[Mapping[str, Any]]) -> dict[Key, Cell]:
    """Pool rows into cells ``(width, lr, weight_decay)``: count statuses, average losses and diagnostics over seeds."""
    pooled: dict[Key, list[Mapping[str, Any]]] = {}
    for row in rows:
        pooled.setdefault(_cell_key(row), []).append(row)
    return {key: _cell(key, group) for key, group in sorted(pooled.items())}


def _cell_key(row: Mapping[str, Any]) -> Key:
    width = row.get("width") or row.get("params", {}).get("model.width")
    return int(width), grid_value(row["lr"]), grid_value(row["weight_decay"])


def _cell(key: Key, rows: list[Mapping[str, Any]]) -> Cell:
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
        cell.val_loss = statistics.fmean(r["val_loss"] for r in done)
        cell.run_id = done[0].get("run_id")
        cell.run_dir = f"runs/{done[0]['name']}" if done[0].get("name") else None
    cell.sigma_max = _mean(r.get("sigma_max") for r in done)
    cell.gain = _mean(r.get("gain") for r in done)
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
                                     str(row.get("multipliers")), row.get("base_width"))
        families[label].rows.append(dict(row))
    for family in families.values():
        family.cells = aggregate_cells(family.rows)
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
