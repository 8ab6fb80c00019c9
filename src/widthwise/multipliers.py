"""Learnable multipliers (Velikanov et al. 2026, arXiv 2601.04890): add them, find them, fold them away.

``add_multipliers`` reparametrizes a weight ``W`` as ``s * V`` or ``diag(r) @ V @ diag(c)`` with
``torch.nn.utils.parametrize``: ``V`` keeps its optimizer and weight decay, the multipliers are separate
parameters (role ``multiplier``) that average gradient noise over a row, column or the whole matrix and so
escape the weight-decay/noise equilibrium that pins ``rms(V)``. ``fold_multipliers`` multiplies them (and
the fixed forward multipliers of a recipe) into the weights and leaves the plain model. The effective weight
and its gradients come from :mod:`widthwise.fused_multipliers` (a fused pass with the closed-form gradients
for large weights, the looked-up rows only for an embedding); the parameters and ``state_dict`` names are
``parametrize``'s either way.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from .parametrizations import MULTIPLIER_KINDS, WIDTHWISE_PARAMETRIZATIONS, Multipliers, attach, fold
from .roles import ParamSite, Role, classify, matrix_axes, name_parts, parameter_sites, unwrap
from .width import base_shapes

PLACEMENTS = ("all", "symmetry_free")
#: Weight decay on every multiplier (arXiv 2601.04890, section 4.3): without it they drift along symmetries.
DEFAULT_MULTIPLIER_WD = 2e-3

#: LLaMA-style slot -> regex on a matrix's module name (its last component). Override with ``name_map``.
DEFAULT_NAME_MAP: dict[str, str] = {
    "q": r"^(q_proj|wq|query|to_q)$",
    "k": r"^(k_proj|wk|key|to_k)$",
    "v": r"^(v_proj|wv|value|to_v)$",
    "o": r"^(o_proj|wo|out_proj|to_out|dense)$",
    "gate": r"^(gate_proj|w1|fc_gate)$",
    "up": r"^(up_proj|w3|fc_up)$",
    "down": r"^(down_proj|w2|fc_down)$",
}

#: The paper's "symmetry-free" placement (arXiv 2601.04890, Appendix C): which multipliers each slot gets.
SYMMETRY_FREE: dict[str, frozenset[str]] = {
    "embedding": frozenset({"row", "col"}),
    "q": frozenset({"row"}),
    "k": frozenset(),
    "v": frozenset(),
    "o": frozenset({"row", "col"}),
    "gate": frozenset({"row"}),
    "up": frozenset(),
    "down": frozenset({"row", "col"}),
}

_KIND_PARTS = {"scalar": frozenset({"scalar"}), "row": frozenset({"row"}), "col": frozenset({"col"}),
               "row_col": frozenset({"row", "col"})}


def _kind_from_parts(parts: frozenset[str]) -> str | None:
    return next((k for k, v in _KIND_PARTS.items() if v == parts), None)


def add_multipliers(
    model: nn.Module,
    kind: str = "row_col",
    placement: str | Sequence[str] = "all",
    *,
    init: float | Mapping[str, float] = 1.0,
    roles: Mapping[str, str] | None = None,
    name_map: Mapping[str, str] | None = None,
    base: nn.Module | None = None,
) -> list[str]:
    """Add learnable multipliers to the matrix layers of ``model`` in place; return the weights that got them.

    ``kind``: ``scalar`` (``W = s V``), ``row`` (``r_i`` per output), ``col`` (``c_j`` per input) or
    ``row_col`` (``W = diag(r) V diag(c)``). ``placement``:

    - ``"all"``: every matrix layer, the input embedding included, the head excluded (the paper's runs).
      An embedding tied to the head is the head's weight too, so it is left out, with a warning;
    - ``"symmetry_free"``: the paper's Appendix C table (embedding row+col, ``o``/``down`` row+col, ``q`` and
      ``gate`` row, ``k``/``v``/``up`` none), ``kind`` keeping only the row or column part;
      ``name_map`` overrides :data:`DEFAULT_NAME_MAP` (slot -> regex on the module's last name component);
    - a list of regexes (``re.search`` on canonical parameter names), applied to the 2-D weights they match;
      each must match at least one.

    ``init`` is the starting value of each whole multiplier (1, or e.g. the muP forward multiplier it
    replaces); a dict maps regexes to values, first match wins, unmatched weights start at 1.
    ``roles`` and ``base`` classify as :func:`widthwise.plan` does (``base`` lets the shape rule find the
    head of a model without an HF ``get_output_embeddings`` or a head-like name).
    """
    if kind not in MULTIPLIER_KINDS:
        raise ValueError(f"unknown multiplier kind {kind!r}; expected one of {', '.join(MULTIPLIER_KINDS)}")
    model = unwrap(model)
    sites = parameter_sites(model)
    role_map = classify(model, roles, base_shapes(base) if base is not None else None, sites=sites)
    targets = _targets(model, sites, role_map, kind, placement, name_map)
    inits = _inits(init, targets)
    present = [n for n in targets if _has_multipliers(sites[n].module, sites[n].tensor_name)]
    if present:  # checked before anything is attached: a refused call leaves the model as it was
        raise ValueError(f"{present[0]!r} already has learnable multipliers")
    for (name, target_kind), value in zip(targets.items(), inits, strict=True):
        site = sites[name]
        out_axis, in_axis = matrix_axes(site.module)
        attach(site.module, site.tensor_name, Multipliers(target_kind, site.param, out_axis, in_axis, value))
    return list(targets)


def _has_multipliers(module: nn.Module, tensor: str) -> bool:
    return parametrize.is_parametrized(module, tensor) and any(
        isinstance(p, Multipliers) for p in module.parametrizations[tensor]
    )


def _matrix_candidates(sites: Mapping[str, ParamSite], role_map: Mapping[str, Role]) -> list[str]:
    return [n for n, s in sites.items() if s.param.ndim == 2 and role_map[n] in (Role.HIDDEN, Role.EMBEDDING)]


def _targets(
    model: nn.Module,
    sites: Mapping[str, ParamSite],
    role_map: Mapping[str, Role],
    kind: str,
    placement: str | Sequence[str],
    name_map: Mapping[str, str] | None,
) -> dict[str, str]:
    if isinstance(placement, str):
        if placement not in PLACEMENTS:
            raise ValueError(
                f"unknown placement {placement!r}; expected {' or '.join(PLACEMENTS)} or a list of regexes"
            )
        names = _matrix_candidates(sites, role_map)
        tied = [n for n in names if sites[n].aliases]
        if tied:
            warnings.warn(
                f"{tied[0]!r} is shared with {sites[tied[0]].aliases[0]!r} (tied weights): no multipliers there, "
                "as the head gets none (arXiv 2601.04890); untie the weights to give the embedding its own",
                stacklevel=3,
            )
        names = [n for n in names if not sites[n].aliases]
        if placement == "all":
            return {n: kind for n in names}
        return _symmetry_free(sites, role_map, names, kind, name_map)
    if not isinstance(placement, Sequence) or not placement:
        raise ValueError("placement must be 'all', 'symmetry_free' or a non-empty list of regexes")
    targets: dict[str, str] = {}
    for pattern in placement:
        regex = _compile(pattern, "placement")
        hits = [n for n, s in sites.items()
                if role_map[n] is not Role.MULTIPLIER and any(regex.search(a) for a in s.all_names)]
        matrices = [n for n in hits if sites[n].param.ndim == 2]
        if not matrices:
            found = f"only {hits[0]!r}, shape {sites[hits[0]].shape}" if hits else "no parameter"
            raise ValueError(f"placement regex {pattern!r} matches no 2-D weight of {type(model).__name__} ({found})")
        for n in matrices:
            if sites[n].aliases:
                raise ValueError(f"placement regex {pattern!r} matches {n!r}, which is tied to "
                                 f"{sites[n].aliases[0]!r}: multipliers on a shared weight cannot fold exactly")
            targets.setdefault(n, kind)
    return targets


def _symmetry_free(
    sites: Mapping[str, ParamSite],
    role_map: Mapping[str, Role],
    names: list[str],
    kind: str,
    name_map: Mapping[str, str] | None,
) -> dict[str, str]:
    if kind == "scalar":
        raise ValueError("placement 'symmetry_free' is defined for vector multipliers: use kind row, col or row_col")
    slots = {slot: _compile(rx, f"name_map[{slot!r}]") for slot, rx in {**DEFAULT_NAME_MAP, **(name_map or {})}.items()}
    unknown = sorted(set(slots) - set(SYMMETRY_FREE))
    if unknown:
        raise ValueError(f"name_map: unknown slot {unknown[0]!r}; expected some of {', '.join(DEFAULT_NAME_MAP)}")
    targets = {}
    for n in names:
        if role_map[n] is Role.EMBEDDING:
            slot = "embedding"
        else:
            leaf = name_parts(n)[0]
            slot = next((s for s, rx in slots.items() if rx.search(leaf)), None)
            if slot is None:
                raise ValueError(f"placement 'symmetry_free': {n!r} matches no slot of the name map "
                                 f"({', '.join(slots)}); pass name_map or a list of regexes")
        parts = SYMMETRY_FREE[slot] & _KIND_PARTS[kind]
        if parts:
            targets[n] = _kind_from_parts(parts)
    return targets


def _compile(pattern: str, what: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except (re.error, TypeError) as err:
        raise ValueError(f"{what}: {pattern!r} is not a valid regex: {err}") from None


def _inits(init: float | Mapping[str, float], targets: Mapping[str, str]) -> list[float]:
    if not isinstance(init, Mapping):
        return [float(init)] * len(targets)
    compiled = [(p, _compile(p, "init"), float(v)) for p, v in init.items()]
    used, values = set(), []
    for name in targets:
        hit = next(((p, v) for p, rx, v in compiled if rx.search(name)), None)
        if hit:
            used.add(hit[0])
        values.append(hit[1] if hit else 1.0)
    unused = [p for p, _, _ in compiled if p not in used]
    if unused:
        raise ValueError(f"init regex {unused[0]!r} matches no weight that gets multipliers")
    return values


def multiplier_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The learnable multipliers of ``model`` (widthwise's, wherever they sit)."""
    return [p for m in model.modules() if isinstance(m, Multipliers) for p in m.parameters(recurse=False)]


def fold_multipliers(model: nn.Module) -> nn.Module:
    """Multiply learnable and fixed forward multipliers into the weights; return the plain ``model``.

    Afterwards the model has its original module classes, no extra parameters, buffers or parametrizations,
    the ``state_dict`` keys of a model that never had multipliers, and the same outputs (the folded weight is
    the very tensor the forward pass computed). Parameter objects are kept, so an optimizer still points at
    them. A weight shared with another module (tied) is folded only if its multipliers are exactly the
    identity; otherwise ``ValueError``, since folding would change the other module's output.
    """
    shared = {id(s.param): s for s in parameter_sites(model).values() if s.aliases}
    for module_name, module in list(model.named_modules()):
        if not parametrize.is_parametrized(module):
            continue
        for tensor in list(module.parametrizations.keys()):
            plist = module.parametrizations[tensor]
            ours = [isinstance(p, WIDTHWISE_PARAMETRIZATIONS) for p in plist]
            if not any(ours):
                continue
            where = f"{module_name}.{tensor}" if module_name else tensor
            if not all(ours):
                raise ValueError(
                    f"{where!r} mixes widthwise multipliers with other parametrizations; remove those first"
                )
            site = shared.get(id(plist.original))
            if site is not None:
                with torch.no_grad():
                    identity = torch.equal(getattr(module, tensor), plist.original)
                if not identity:
                    raise ValueError(
                        f"cannot fold multipliers into {where!r}: the weight is tied to "
                        f"{', '.join(a for a in site.all_names if a != where)} and folding would change its output; "
                        "untie the weights first"
                    )
            fold(module, tensor)
    return model
