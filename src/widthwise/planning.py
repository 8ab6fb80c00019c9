"""The plan: every parameter's role, width multiplier, optimizer, final LR and WD factors and init, plus forward
multipliers.

``ww.plan(model, base=..., recipe=..., optimizer=...)`` builds it; it prints as a table, round-trips through
JSON/YAML (configs and checkpoints store it) and drives :func:`widthwise.init_weights` and
:func:`widthwise.build_optimizer`, which only groups what the plan says: the plan is the single source of every
learning rate and weight decay the optimizer runs.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import yaml
from torch import nn
from torch.nn.utils import parametrize

from . import rules
from .multipliers import DEFAULT_MULTIPLIER_WD
from .recipes import Recipe, get_recipe, role_scaling
from .roles import ParamSite, Role, classify, declared_head, matrix_axes, parameter_sites, unwrap
from .tables import format_table
from .width import base_shapes, check_same_parameters, width_multiplier

PLAN_VERSION = 2
QUERY_NAMES = re.compile(r"^(q_proj|wq|query|q|to_q)$")
QUERY_NORM_NAMES = re.compile(r"^(q_norm|query_norm|q_layernorm|q_ln)$")


@dataclass(frozen=True)
class ParamPlan:
    """The plan for one parameter (canonical name; ``aliases`` are other names of a shared tensor).

    ``optimizer`` (``adamw`` | ``muon``) trains it. ``lr_factor``/``wd_factor`` are final: they multiply the
    base LR (Muon's base LR for ``muon`` entries) and base WD. ``None`` means the value is absolute instead:
    ``fixed_lr``/``fixed_wd`` (multipliers' own settings). :meth:`lr` and :meth:`weight_decay` give the values
    the optimizer runs.
    """

    name: str
    role: Role
    shape: tuple[int, ...]
    width_mult: float
    lr_factor: float | None
    wd_factor: float | None
    init: str | None
    init_std: float | None = None
    aliases: tuple[str, ...] = ()
    optimizer: str = "adamw"
    fixed_lr: float | None = None
    fixed_wd: float | None = None

    def __post_init__(self) -> None:
        if self.optimizer not in rules.OPTIMIZERS:
            raise ValueError(f"parameter {self.name!r}: unknown optimizer {self.optimizer!r}; "
                             f"expected one of {', '.join(rules.OPTIMIZERS)}")
        if self.optimizer == "muon" and len(self.shape) != 2:
            raise ValueError(f"Muon takes 2-D matrices; {self.role.value} parameter {self.name!r} has shape "
                             f"{self.shape} (give it another role, or use optimizer='adamw')")
        for kind, factor, fixed in (("lr", self.lr_factor, self.fixed_lr), ("wd", self.wd_factor, self.fixed_wd)):
            if (factor is None) == (fixed is None):
                raise ValueError(f"parameter {self.name!r}: give exactly one of {kind}_factor and fixed_{kind}")

    def lr(self, base_lr: float, muon_lr: float | None = None) -> float:
        """The learning rate the optimizer runs: base LR (``muon_lr`` for Muon, when given) x factor, or fixed."""
        if self.lr_factor is None:
            return self.fixed_lr  # type: ignore[return-value]  # __post_init__: one of the two is set
        base = muon_lr if self.optimizer == "muon" and muon_lr is not None else base_lr
        return base * self.lr_factor

    def weight_decay(self, base_wd: float) -> float:
        """The weight decay the optimizer runs: ``base_wd`` x factor, or the fixed value."""
        return self.fixed_wd if self.wd_factor is None else base_wd * self.wd_factor  # type: ignore[return-value]


@dataclass(frozen=True)
class ForwardMultiplier:
    """A fixed multiplier the recipe puts on a module's output: ``value * module(x)``.

    ``kind`` is ``output`` (muP's head ``1/m``) or ``query`` (attention ``1/d_head``); ``tensors`` are the
    module's tensors it multiplies (weight and bias, so the whole output is scaled).
    """

    module: str
    kind: str
    value: float
    tensors: tuple[str, ...] = ("weight",)


@dataclass
class Plan:
    """Roles, width multipliers, optimizers and per-parameter scaling of one model under one recipe.

    ``optimizer``: ``adamw``, or ``muon`` (Muon on the hidden matrices, AdamW on the rest);
    ``muon_adjust_lr_fn``: ``torch.optim.Muon``'s ``adjust_lr_fn`` the Muon factors assume (``None`` under AdamW).
    """

    recipe: Recipe
    params: dict[str, ParamPlan]
    forward_multipliers: list[ForwardMultiplier] = field(default_factory=list)
    optimizer: str = "adamw"
    muon_adjust_lr_fn: str | None = None

    def __getitem__(self, name: str) -> ParamPlan:
        return self.params[name]

    def __iter__(self):
        return iter(self.params.values())

    def __len__(self) -> int:
        return len(self.params)

    def roles(self) -> dict[str, Role]:
        return {name: p.role for name, p in self.params.items()}

    def names(self, role: Role | str) -> list[str]:
        return [name for name, p in self.params.items() if p.role == Role(role)]

    def table(self, lr: float | None = None, weight_decay: float | None = None, muon_lr: float | None = None) -> str:
        """The plan as a text table; with ``lr``/``weight_decay`` (base values) also the absolute values.

        The absolute columns are :meth:`ParamPlan.lr` and :meth:`ParamPlan.weight_decay`: exactly what the groups
        of :func:`widthwise.build_optimizer` run with the same base values (``muon_lr`` defaults to ``lr``).
        A factor cell ``=v`` is an absolute value ``v`` (multipliers' own LR and WD).
        """
        if (lr is None) != (weight_decay is None):
            raise ValueError("Plan.table: pass both lr and weight_decay, or neither")
        header = ["name", "role", "optimizer", "shape", "width x", "lr x", "wd x", "lr*wd x", "init std"]
        if lr is not None:
            header += ["lr", "wd", "lr*wd"]
        rows = []
        for p in self.params.values():
            lr_x = f"={_g(p.fixed_lr)}" if p.lr_factor is None else _g(p.lr_factor)
            wd_x = f"={_g(p.fixed_wd)}" if p.wd_factor is None else _g(p.wd_factor)
            shrink = "-" if p.lr_factor is None or p.wd_factor is None else _g(p.lr_factor * p.wd_factor)
            std = _g(p.init_std) if p.init == "normal" and p.init_std is not None else p.init or "-"
            row = [p.name, p.role.value, p.optimizer, "x".join(map(str, p.shape)) or "()", _g(p.width_mult),
                   lr_x, wd_x, shrink, std]
            if lr is not None and weight_decay is not None:
                p_lr, p_wd = p.lr(lr, muon_lr), p.weight_decay(weight_decay)
                row += [_g(p_lr), _g(p_wd), _g(p_lr * p_wd)]
            rows.append(row)
        settings = {"recipe": self.recipe.name, "optimizer": self.optimizer}
        if self.optimizer == "muon":
            settings["muon_adjust_lr_fn"] = self.muon_adjust_lr_fn
        settings.update((k, v) for k, v in self.recipe.to_dict().items() if k != "name")
        title = "widthwise plan: " + " ".join(f"{k}={v}" for k, v in settings.items())
        fwd = [f"forward multiplier: {f.module} ({f.kind}) x {f.value:.6g} on {', '.join(f.tensors)}"
               for f in self.forward_multipliers]
        return "\n".join([title, format_table(rows, header, rule=True), *fwd])

    def __str__(self) -> str:
        return self.table()

    def to_dict(self) -> dict[str, Any]:
        params = []
        for p in self.params.values():
            d = asdict(p)
            d["role"] = p.role.value
            d["shape"] = list(p.shape)
            d["aliases"] = list(p.aliases)
            params.append(d)
        fwd = [{**asdict(f), "tensors": list(f.tensors)} for f in self.forward_multipliers]
        return {"version": PLAN_VERSION, "recipe": self.recipe.to_dict(), "optimizer": self.optimizer,
                "muon_adjust_lr_fn": self.muon_adjust_lr_fn, "params": params, "forward_multipliers": fwd}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        version = data.get("version") if isinstance(data, Mapping) else None
        if version != PLAN_VERSION:
            raise ValueError(f"not a widthwise plan of version {PLAN_VERSION} (got version {version!r}): "
                             "re-plan the model with ww.plan()")
        try:
            params = {}
            for d in data["params"]:
                p = ParamPlan(**{**d, "role": Role(d["role"]), "shape": tuple(d["shape"]),
                                 "aliases": tuple(d.get("aliases", ()))})
                params[p.name] = p
            fwd = [ForwardMultiplier(**{**f, "tensors": tuple(f["tensors"])})
                   for f in data.get("forward_multipliers", [])]
            return cls(Recipe.from_dict(data["recipe"]), params, fwd, data["optimizer"], data["muon_adjust_lr_fn"])
        except (KeyError, TypeError) as err:
            raise ValueError(f"malformed widthwise plan: {err}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.from_dict(json.loads(text))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> Plan:
        return cls.from_dict(yaml.safe_load(text))


def _g(x: float) -> str:
    return f"{x:.4g}"


def _is_norm(site: ParamSite) -> bool:
    leaf = site.module_name.rpartition(".")[2].lower()
    return "norm" in type(site.module).__name__.lower() or "norm" in leaf or leaf.startswith("ln")


def plan(
    model: nn.Module,
    base: nn.Module | None = None,
    recipe: str | Recipe | Mapping[str, Any] = "robust",
    *,
    optimizer: str = "adamw",
    muon_adjust_lr_fn: str | None = rules.DEFAULT_MUON_ADJUST_LR_FN,
    multiplier_lr: float | None = None,
    multiplier_weight_decay: float = DEFAULT_MULTIPLIER_WD,
    roles: Mapping[str, str] | None = None,
    forward_multipliers: bool = True,
    scales: Mapping[str, Mapping[str, float]] | None = None,
    **recipe_overrides: Any,
) -> Plan:
    """Classify ``model``'s parameters, derive width multipliers against ``base`` and apply ``recipe``.

    ``base`` is a smaller instance of the same model (it may live on the meta device); without it every
    width multiplier is 1. ``optimizer="muon"`` puts the hidden matrices on Muon with the spectral rule for
    ``muon_adjust_lr_fn`` (:meth:`Recipe.exponents`); everything else is AdamW's. Multipliers take the absolute
    ``multiplier_lr`` (default: the base LR) and ``multiplier_weight_decay``. ``roles`` overrides
    classification (regex -> role, first match wins). ``scales`` multiplies the LR and WD of the parameters whose
    name a regex matches (``{"mlp.down_proj": {"lr": 2.0, "weight_decay": 0.5}}``, first match wins, on top of the
    recipe: :func:`apply_scales`). ``forward_multipliers=False`` leaves out the recipe's
    fixed forward multipliers (head ``1/m``, attention ``1/d_head``) for models that implement them themselves.
    Extra keyword arguments override recipe fields, e.g. ``wd_exponent=1.0``. Add learnable multipliers before
    planning.
    """
    if optimizer not in rules.OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; expected one of {', '.join(rules.OPTIMIZERS)}")
    rules.check_adjust_lr_fn(muon_adjust_lr_fn)
    _check_value("multiplier_weight_decay", multiplier_weight_decay)
    if multiplier_lr is not None:
        _check_value("multiplier_lr", multiplier_lr)
    model = unwrap(model)
    base = unwrap(base) if base is not None else None
    recipe_obj = get_recipe(recipe, **recipe_overrides)
    sites = parameter_sites(model)
    shapes = base_shapes(base) if base is not None else None
    if shapes is not None:
        check_same_parameters(sites, shapes)
    role_map = classify(model, roles, shapes, sites)
    params = {}
    for name, site in sites.items():
        role = role_map[name]
        m = width_multiplier(site, role, None if shapes is None else shapes.get(name))
        param_optimizer = "muon" if optimizer == "muon" and role is Role.HIDDEN else "adamw"
        s = role_scaling(recipe_obj, role, m, site.tensor_name, _is_norm(site), param_optimizer, muon_adjust_lr_fn)
        lr_x, wd_x, fixed_lr, fixed_wd = s.lr, s.wd, None, None
        if role is Role.MULTIPLIER:
            wd_x, fixed_wd = None, float(multiplier_weight_decay)
            if multiplier_lr is not None:
                lr_x, fixed_lr = None, float(multiplier_lr)
        params[name] = ParamPlan(name, role, site.shape, m, lr_x, wd_x, s.init, s.init_std, tuple(site.aliases),
                                 param_optimizer, fixed_lr, fixed_wd)
    if scales:
        params = apply_scales(params, scales)
    _warn_width_constant_multipliers(recipe_obj, params)
    fwd = []
    if forward_multipliers:
        fwd = _head_multipliers(model, sites, role_map, shapes, recipe_obj)
        fwd += _attention_multipliers(model, base, recipe_obj)
    return Plan(recipe_obj, params, fwd, optimizer, muon_adjust_lr_fn if optimizer == "muon" else None)


SCALE_KEYS = ("lr", "weight_decay")


def apply_scales(params: Mapping[str, ParamPlan], scales: Mapping[str, Mapping[str, float]]) -> dict[str, ParamPlan]:
    """``params`` with the LR and WD of each parameter whose name matches a regex of ``scales`` (``re.search``,
    first match wins) multiplied by that entry's ``lr`` and ``weight_decay`` (each default 1).

    Per-layer LR multipliers as Falcon-H1 tunes them, and the tool of arXiv 2601.04890's scale sweep (one group's
    LR times S and WD over S moves its equilibrium norm by S). They multiply the final factor (or the absolute
    value of a multiplier's own LR/WD), so the plan's table shows what runs. A regex that matches nothing, an
    unknown key or a non-positive LR scale (negative WD scale) is a :class:`ValueError`.
    """
    compiled = []
    for pattern, entry in scales.items():
        try:
            regex = re.compile(pattern)
        except re.error as err:
            raise ValueError(f"scales: {pattern!r} is not a regex ({err})") from None
        if not isinstance(entry, Mapping) or set(entry) - set(SCALE_KEYS):
            raise ValueError(f"scales: {pattern!r} takes a mapping with keys among {', '.join(SCALE_KEYS)}, "
                             f"got {entry!r}")
        lr_s, wd_s = (entry.get(k, 1.0) for k in SCALE_KEYS)
        for key, v, ok in (("lr", lr_s, lambda x: x > 0), ("weight_decay", wd_s, lambda x: x >= 0)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not ok(v):
                raise ValueError(f"scales: {pattern!r}: {key} must be a {'positive' if key == 'lr' else 'non-negative'}"
                                 f" finite number, got {v!r}")
        if not any(regex.search(name) for name in params):
            raise ValueError(f"scales: {pattern!r} matches no parameter (names look like {next(iter(params), '')!r})")
        compiled.append((regex, float(lr_s), float(wd_s)))
    out = {}
    for name, p in params.items():
        hit = next(((lr_s, wd_s) for regex, lr_s, wd_s in compiled if regex.search(name)), None)
        if hit is not None:
            lr_s, wd_s = hit
            p = replace(p, lr_factor=None if p.lr_factor is None else p.lr_factor * lr_s,
                        fixed_lr=None if p.fixed_lr is None else p.fixed_lr * lr_s,
                        wd_factor=None if p.wd_factor is None else p.wd_factor * wd_s,
                        fixed_wd=None if p.fixed_wd is None else p.fixed_wd * wd_s)
        out[name] = p
    return out


class WidthConstantMultipliersWarning(UserWarning):
    """Learnable multipliers train at a width-constant LR (``sp`` with a base narrower than the model)."""


def _warn_width_constant_multipliers(recipe: Recipe, params: Mapping[str, ParamPlan]) -> None:
    """Warn when learnable multipliers train at a width-constant LR while the model is wider than its base.

    Under a recipe that does not scale with width (``sp``) every LR, the multipliers' included, is the base
    one at every width. The multipliers' own width rule is an open question (arXiv 2601.04890), so nothing
    makes their training consistent across widths; a width sweep then compares more than the widths.
    """
    if recipe.scales_with_width or not any(p.role is Role.MULTIPLIER for p in params.values()):
        return
    if all(p.width_mult == 1 for p in params.values()):
        return
    warnings.warn(
        f"recipe {recipe.name!r} trains the learnable multipliers (and every matrix) at a width-constant LR: "
        "nothing makes their training consistent across widths (their own width rule is an open question, "
        "arXiv 2601.04890); for width transfer use a recipe that scales with width ('robust', 'mup')",
        WidthConstantMultipliersWarning, stacklevel=3,
    )


def _check_value(label: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{label} must be a non-negative finite number, got {value!r}")


def _tensors(module: nn.Module) -> tuple[str, ...]:
    has_bias = module._parameters.get("bias") is not None or parametrize.is_parametrized(module, "bias")
    return ("weight", "bias") if has_bias else ("weight",)


def _head_multipliers(
    model: nn.Module,
    sites: Mapping[str, ParamSite],
    role_map: Mapping[str, Role],
    shapes: Mapping[str, tuple[int, ...]] | None,
    recipe: Recipe,
) -> list[ForwardMultiplier]:
    modules = dict(model.named_modules())
    heads = {s.module_name: s for n, s in sites.items() if role_map[n] is Role.HEAD and s.tensor_name == "weight"}
    declared = declared_head(model)
    if declared is not None:  # a head tied to the embedding keeps the embedding's role but still gets 1/m
        module_name = next(n for n, m in modules.items() if m is declared)
        site = next((s for s in sites.values() if f"{module_name}.weight" in s.all_names), None)
        if site is not None:
            heads.setdefault(module_name, site)
    result = []
    for module_name, site in sorted(heads.items()):
        module = modules[module_name]
        m = 1.0
        if shapes is not None:
            in_axis = matrix_axes(module)[1]
            m = site.shape[in_axis] / shapes[site.name][in_axis]
        value = rules.output_multiplier(m, recipe.output_exponent)
        if value != 1.0:
            result.append(ForwardMultiplier(module_name, "output", value, _tensors(module)))
    return result


def _attention_multipliers(model: nn.Module, base: nn.Module | None, recipe: Recipe) -> list[ForwardMultiplier]:
    if recipe.attention_scale == "standard":
        return []
    base_modules = dict(base.named_modules()) if base is not None else {}
    result = []
    for name, module in model.named_modules():
        head_dim = getattr(module, "head_dim", None)
        if not isinstance(head_dim, int):
            if "attention" in type(module).__name__.lower() and not any(
                isinstance(getattr(c, "head_dim", None), int) for c in module.modules()
            ):
                raise ValueError(
                    f"recipe {recipe.name!r} scales attention logits as 1/d_head, but attention module {name!r} "
                    f"({type(module).__name__}) exposes no integer `head_dim`; pass attention_scale='standard' "
                    "(right when d_head does not change with width) or forward_multipliers=False if the model "
                    "scales attention itself"
                )
            continue
        children = dict(module.named_children())
        query = next((c for c in children if QUERY_NAMES.match(c)), None)
        query_norm = next((c for c in children if QUERY_NORM_NAMES.match(c)), None)
        base_module = base_modules.get(name)
        base_head_dim = getattr(base_module, "head_dim", head_dim) if base is not None else head_dim
        value = rules.attention_query_multiplier(head_dim, base_head_dim, recipe.attention_scale)
        if value == 1.0:
            continue
        if query_norm is not None:  # a norm after the projection would undo a scale on the projection
            target, tensors = f"{name}.{query_norm}", _tensors(children[query_norm])
        elif query is not None:
            target, tensors = f"{name}.{query}", _tensors(children[query])
        else:
            raise ValueError(
                f"recipe {recipe.name!r} needs a x{value:.4g} query multiplier in {name!r} but found no query "
                f"projection among its children ({', '.join(children) or 'none'}; fused QKV is not supported); "
                "pass attention_scale='standard' or forward_multipliers=False"
            )
        result.append(ForwardMultiplier(target, "query", value, tensors))
    return result
