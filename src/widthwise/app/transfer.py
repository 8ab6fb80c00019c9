"""``widthwise transfer``: a train config for a new width from a sweep's optimum.

The base LR and weight decay are the family's ``fit`` estimate at ``from_width`` (``optima.json``, written by
``widthwise analyze``); a verdict other than ``transfers`` is a warning, not a refusal. They are *base* values: the
config keeps the sweep's ``scaling.base_width``, so the recipe's plan scales them to the target width exactly as it
did during the sweep. Everything else comes from the config of the family's best run at ``from_width``, moved to the
new width with its head dim kept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from ..errors import ConfigError, RunError, SweepError
from ..tables import format_table
from .analysis.analyze import OPTIMA_VERSION
from .atomic import atomic_write_text
from .config import Config, apply_overrides, config_keys, from_dict
from .rundir import RunDir
from .setup import at_width, build

#: Flags of ``widthwise transfer`` that pick a family, with the optima.json field each one matches.
FAMILY_FLAGS = {"recipe": "--recipe", "optimizer": "--optimizer", "multipliers": "--multipliers"}
#: Forward multipliers of the model: ``null`` takes the recipe's value at each width.
FORWARD_KEYS = config_keys("forward", section="model")


@dataclass
class Transfer:
    """A config for ``config.model.width`` built from a sweep family's optimum at ``from_width``."""

    config: Config
    family: str
    from_width: int
    lr: float  # base values: the family's fit at from_width
    weight_decay: float
    verdict: str  # transfers | drifts | inconclusive
    summary: str
    plan_table: str
    sweep_dir: Path
    run_id: str  # the best run at from_width, whose config this one derives from
    warnings: list[str] = field(default_factory=list)
    regret: dict[str, Any] | None = None  # the family's regret at its widest width (optima.json)

    def regret_lines(self) -> list[str]:
        """The regret at the widest swept width of each narrower width's optimum, one line each."""
        r = self.regret
        if not r:
            return []
        out = []
        for t in r["from"]:
            spread = f" (seed std {t['seed_std']:.2g})" if t.get("seed_std") is not None else ""
            value = f"{t['regret']:+.4f}{spread}" if t.get("regret") is not None else f"none: the run {t['status']}"
            out.append(f"regret at width {r['width']} of width {t['width']}'s optimum (lr {t['lr']:.3g}, wd "
                       f"{t['weight_decay']:.3g}): {value}")
        return out


def read_optima(sweep_dir: Path) -> dict[str, Any]:
    """``SWEEP_DIR/optima.json`` (:class:`SweepError` naming the file if it is missing or malformed)."""
    path = Path(sweep_dir) / "optima.json"
    if not path.is_file():
        raise SweepError(f"{path}: no such file; run `widthwise analyze {sweep_dir}` first")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SweepError(f"{path}: cannot read it ({err}); rerun `widthwise analyze {sweep_dir}`") from None
    except RecursionError:
        raise SweepError(f"{path}: JSON nested too deeply; rerun `widthwise analyze {sweep_dir}`") from None
    families = data.get("families") if isinstance(data, dict) else None
    if not isinstance(data, dict) or data.get("version") != OPTIMA_VERSION or not isinstance(families, list):
        raise SweepError(f"{path}: not an optima file of version {OPTIMA_VERSION}; rerun `widthwise analyze "
                         f"{sweep_dir}`")
    return data


def select_family(families: list[dict[str, Any]], recipe: str | None = None, optimizer: str | None = None,
                  multipliers: str | None = None, label: str | None = None) -> dict[str, Any]:
    """The one family matching the filters (``label``: its exact label); :class:`SweepError` otherwise."""
    wanted = {"recipe": recipe, "optimizer": optimizer, "multipliers": multipliers}
    found = [f for f in families
             if all(v is None or str(f.get(k)) == str(v) for k, v in wanted.items())
             and (label is None or f.get("label") == label)]
    if len(found) == 1:
        return found[0]
    asked = " ".join(f"{k}={v}" for k, v in wanted.items() if v is not None) + (f" label={label!r}" if label else "")
    labels = "; ".join(repr(f.get("label")) for f in families) or "none"
    if not found:
        raise SweepError(f"no sweep family matches {asked or 'the filters'}; the families are: {labels}")
    varied = [k for k in FAMILY_FLAGS if len({str(f.get(k)) for f in found}) > 1]
    hint = (", ".join(f"{FAMILY_FLAGS[k]} ({', '.join(sorted({str(f.get(k)) for f in found}))})" for k in varied)
            if varied else "--family LABEL")
    shown = "; ".join(repr(f.get("label")) for f in found)
    raise SweepError(f"{len(found)} sweep families match{' ' + asked if asked else ''}: {shown}; pick one with {hint}")


def _pick_width(family: dict[str, Any], from_width: int | None) -> int:
    per_width = family.get("per_width") or {}
    usable = sorted(int(w) for w, entry in per_width.items()
                    if (entry.get("fit") or {}).get("lr") is not None and entry.get("best"))
    if from_width is None:
        if not usable:
            raise SweepError(f"family {family.get('label')!r} has no width with a completed optimum")
        return usable[-1]
    if from_width not in usable:
        widths = ", ".join(map(str, usable)) or "none"
        raise SweepError(f"--from-width {from_width}: family {family.get('label')!r} has an optimum at widths {widths}")
    return from_width


def _source_config(sweep_dir: Path, best: dict[str, Any]) -> tuple[Config, dict[str, Any], bool]:
    """The config of the run ``best`` names, its ``resolved:`` section and whether its directory is of the legacy
    layout: from its run dir's config.yaml, else (nothing resolved) its row in results.db."""
    run_dir = best.get("run_dir")
    if run_dir:
        path = Path(run_dir) if Path(run_dir).is_absolute() else Path(sweep_dir) / run_dir
        if path.is_dir():
            try:
                run = RunDir.open(path, what="sweep run")
                return run.config(), run.resolved(), run.legacy
            except RunError as err:
                raise SweepError(str(err)) from None
    from .sweep.store import read_results

    where = f"{sweep_dir}: run {best.get('run_id')} of optima.json has no run directory ({run_dir or 'none named'})"
    try:
        rows = read_results(Path(sweep_dir))
    except SweepError as err:
        raise SweepError(f"{where} and its results cannot be read ({err})") from None
    for row in rows:
        if row.get("run_id") == best.get("run_id"):
            return from_dict(row["config"]), {}, False
    raise SweepError(f"{where} nor a row in results.db; rerun `widthwise analyze`")


def vocab_size(config: Config) -> int:
    """The model's vocabulary when nothing resolved it: ``model.vocab_size``, else the tokenizer's target size."""
    return config.model.vocab_size or config.data.vocab_size


def release_forward_multipliers(config: Config, legacy: bool = False) -> tuple[Config, list[str]]:
    """``config`` with the forward multipliers it carries to the new width, and warnings about them.

    The user's values (``null``: the recipe's, resolved at each width) carry over as they are; a set value stays
    fixed at every width, with a warning. A ``legacy`` run directory stored the values resolved at its own width in
    the user's fields, where they would freeze: they are set back to ``null``, with a warning.
    """
    m = config.model
    fixed = [k for k in FORWARD_KEYS if getattr(m, k) is not None]
    if legacy and fixed:
        names = ", ".join(f"model.{k}" for k in fixed)
        return apply_overrides(config, {f"model.{k}": None for k in fixed}), [
            f"the run's config.yaml is of the earlier layout, which stored {names} resolved at its width: they are "
            "left to the recipe at the new width"]
    if legacy:
        return config, []
    return config, [f"model.{k} is set to {getattr(m, k):.6g} in the run's config; it stays fixed at every width"
                    for k in fixed]


def plan_table(config: Config, vocab: int | None = None) -> str:
    """The plan at the config's width with absolute LR/WD per parameter, then the optimizer's groups.

    Builds model, plan and optimizer on the meta device (no memory, no init values), so it runs for any
    width and rejects what the trainer would (:class:`ConfigError`). ``vocab``: the vocabulary a run resolved.
    """
    o = config.optim
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            built = build(config, vocab or vocab_size(config), torch.device("meta"))
    except ConfigError:
        raise
    except ValueError as err:  # the plan: shapes that do not scale consistently from the base
        raise ConfigError(f"model.width: {config.model.width} does not scale from the base width "
                          f"{config.scaling.base_width}: {err}") from None
    table = built.plan.table(lr=o.lr, weight_decay=o.weight_decay, muon_lr=o.muon_lr)
    return f"{table}\n\n{optimizer_groups(built.optimizer)}"


def optimizer_groups(optimizer: torch.optim.Optimizer) -> str:
    """The optimizer's parameter groups as a table: absolute LR and WD as the trainer sets them."""
    children = getattr(optimizer, "optimizers", {type(optimizer).__name__.lower(): optimizer})

    def peak(group: dict[str, Any]) -> float:  # the LR before the schedule's factor (warmup starts below it)
        return group.get("initial_lr", group["lr"])

    rows = [[name, str(g.get("role", "-")), str(len(g["params"])), f"{g.get('width_mult', 1):.4g}",
             f"{peak(g):.4g}", f"{g['weight_decay']:.4g}", f"{peak(g) * g['weight_decay']:.4g}"]
            for name, child in children.items() for g in child.param_groups]
    table = format_table(rows, header=["optimizer", "role", "tensors", "width x", "lr", "wd", "lr*wd"], rule=True)
    return "optimizer groups (absolute values; the LR schedule multiplies lr by its factor):\n" + table


def transfer_config(sweep_dir: Path, width: int, *, recipe: str | None = None, optimizer: str | None = None,
                    multipliers: str | None = None, from_width: int | None = None,
                    family: str | None = None) -> Transfer:
    """A train config for ``width`` from the sweep's optimum of one family (``family``: an exact label).

    :class:`SweepError` for a missing ``optima.json``, a family choice that does not pick exactly one, or an
    unknown ``from_width``; :class:`ConfigError` for a width the model cannot take.
    """
    sweep_dir = Path(sweep_dir)
    fam = select_family(read_optima(sweep_dir)["families"], recipe, optimizer, multipliers, family)
    fw = _pick_width(fam, from_width)
    entry = fam["per_width"][str(fw)]
    fit, best = entry["fit"], entry["best"]
    source, resolved, legacy = _source_config(sweep_dir, best)
    source, warnings = release_forward_multipliers(source, legacy)
    config = at_width(source, width, what="--width")
    config = apply_overrides(config, {"optim.lr": float(fit["lr"]), "optim.weight_decay": float(fit["weight_decay"]),
                                      "scaling.base_width": source.scaling.base_width or fw})
    table = plan_table(config, resolved.get("model", {}).get("vocab_size"))
    verdict, summary = str(fam.get("verdict", "inconclusive")), str(fam.get("summary", ""))
    warnings += _warnings(fam, fw, width, fit, verdict, summary)
    return Transfer(config, str(fam.get("label")), fw, float(fit["lr"]), float(fit["weight_decay"]), verdict,
                    summary, table, sweep_dir, str(best.get("run_id")), warnings, fam.get("regret"))


def _warnings(fam: dict[str, Any], fw: int, width: int, fit: dict[str, Any], verdict: str, summary: str) -> list[str]:
    out = []
    widest = max((int(w) for w in fam.get("per_width") or {}), default=fw)
    if fw != widest:
        out.append(f"from width {fw} is not the family's widest ({widest})")
    if verdict != "transfers":
        reasons = "; ".join(fam.get("reasons") or []) or summary
        out.append(f"the sweep's verdict is {verdict!r}: {reasons}".rstrip(": "))
    slope = ((fam.get("slopes") or {}).get("lr") or {}).get("slope")
    if verdict == "drifts" and slope is not None and width != fw:
        out.append(f"the base LR optimum moves as width^{slope:+.2f}: at width {width} it may be "
                   f"x{(width / fw) ** slope:.3g} the value used")
    if fit.get("at_edge"):
        out.append(f"the optimum at width {fw} lies at the edge of the grid: widen the LR/WD grid")
    return out + list(fam.get("warnings") or [])


def transfer_header(t: Transfer) -> str:
    """The comment block of a written transfer config: where the values come from."""
    lines = [f"widthwise transfer: train config for width {t.config.model.width}",
             f"sweep: {t.sweep_dir.resolve()}",
             f"family: {t.family}",
             f"from width {t.from_width} (run {t.run_id}): base lr={t.lr:.6g} weight_decay={t.weight_decay:.6g} "
             f"at base width {t.config.scaling.base_width}; the plan scales them",
             f"verdict: {t.verdict}" + (f": {t.summary}" if t.summary else ""),
             *(f"warning: {w}" for w in t.warnings)]
    return "".join(f"# {' '.join(line.split())}\n" for line in lines)


def write_transfer(t: Transfer, out: Path, force: bool = False) -> Path:
    """Write ``t.config`` as YAML with a comment header, atomically; an existing file only with ``force``."""
    out = Path(out)
    if out.is_dir():
        raise SweepError(f"{out} is a directory; give a file name for the config")
    if out.exists() and not force:
        raise SweepError(f"{out} exists; pass --force to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    text = transfer_header(t) + t.config.to_yaml()
    yaml.safe_load(text)  # the header must not break the YAML
    atomic_write_text(out, text)
    return out
