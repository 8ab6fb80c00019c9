"""Learnable multipliers (arXiv 2601.04890) during training: summaries, raw values, drift along symmetries.

Without weight decay, multipliers drift along the forward-pass symmetries of the model (the paper's section 4.3:
the ``W_Q``/``W_K`` product, the residual scale in front of a norm, a norm gain against the next layer's columns)
until activations overflow. :func:`symmetry_drift` measures how far the model has moved along each symmetry as
``log2`` of a ratio of two scales the loss cannot tell apart; :func:`drift_warnings` turns large values into
messages. Monitors that are covered (each ``0`` at an init of 1, growing by ``2 log2 a`` under the move by
``a`` on one side and ``1/a`` on the other, or ``log2 a`` for the residual, which has one side):

- ``qk.<attention>``: ``log2(rms(W_q) / rms(W_k))`` on the effective weights (multipliers and fixed forward scales
  applied), so it sees the move whichever of ``V``, rows, columns or scalars carries it. Per element, so
  independent of GQA and width. Its init value is the init's imbalance (0 when q and k start alike);
- ``vo.<attention>``: ``log2(out(W_v) / in(W_o))``; attention is linear in ``v``, so scaling ``v``'s outputs
  and ``o``'s inputs oppositely is a symmetry (not listed by the paper, avoided by its symmetry-free placement);
- ``up_down.<mlp>``: ``log2(out(W_up) / in(W_down))``, the same for SwiGLU's ``silu(gate) * up``;
- ``norm_vs_cols.<norm>``: ``log2(rms(gain) / geomean over readers of in(W))``, a norm gain against the input
  multipliers of the matrices that read the norm's output (the same block's q/k/v or gate/up; the head for the
  final norm). Reported only when every reader has input multipliers;
- ``residual``: the mean over residual writers (embeddings, ``o`` and ``down`` slots) of ``log2(out(W))``. The
  residual stream is only read through norms, so one factor on every writer changes nothing. Reported only when
  the model has ``o`` and ``down`` slots and every writer has output multipliers.

Here ``out(W) = rms(row) * |scalar|`` and ``in(W) = rms(col) * |scalar|`` (the factors present; none: no monitor).

Not covered: the split of one matrix's scale between its rows, columns and ``V`` (``V`` has weight decay; a row
against column split changes no activation), per-head or per-channel moves (only the uniform part of each
symmetry is seen), models whose blocks hold norms outside :data:`DEFAULT_NORM_READERS` (post-norms: Gemma 2,
OLMo 2; the block is skipped), Gemma's ``1 + weight`` norm gains and QK-norm models, where ``qk`` is a free scale
of each side rather than of their product.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from ..multipliers import DEFAULT_NAME_MAP
from ..roles import ParamSite, Role, classify, parameter_sites, unwrap
from .matrices import effective_weight
from .naming import layer_type

__all__ = [
    "DEFAULT_NORM_READERS",
    "SymmetryMonitor",
    "drift_warnings",
    "multiplier_groups",
    "multiplier_stats",
    "multiplier_values",
    "symmetry_drift",
]

#: Regex on a block norm's name (its last component) -> the slots of the same block that read its output.
DEFAULT_NORM_READERS: dict[str, tuple[str, ...]] = {
    r"^(attn_norm|attention_norm|input_layernorm|ln_1)$": ("q", "k", "v"),
    r"^(mlp_norm|ffn_norm|post_attention_layernorm|ln_2)$": ("gate", "up"),
}
#: A norm outside the blocks with such a name feeds the head.
FINAL_NORM = re.compile(r"^(norm|final_norm|final_layernorm|norm_f|ln_f)$")

_MEANINGS = {
    "qk": "the W_Q/W_K product (query scale against key scale)",
    "vo": "the W_V/W_O product (value outputs against output-projection inputs)",
    "up_down": "the MLP up/down product (up outputs against down inputs)",
    "norm_vs_cols": "a norm gain against the input columns of the layers reading it",
    "residual": "the residual-stream scale in front of the norms",
}


def _multiplier_sites(model: nn.Module) -> dict[str, ParamSite]:
    return {name: site for name, site in parameter_sites(model).items() if site.multiplier_of is not None}


def multiplier_groups(model: nn.Module) -> dict[str, list[torch.Tensor]]:
    """Every multiplier parameter by layer type (:func:`widthwise.diagnostics.naming.layer_type`), types sorted:
    what :func:`multiplier_stats` pools (find them once to measure the same model repeatedly)."""
    groups: dict[str, list[torch.Tensor]] = {}
    for name, site in _multiplier_sites(model).items():
        groups.setdefault(layer_type(name), []).append(site.param)
    return dict(sorted(groups.items()))


@torch.no_grad()
def multiplier_stats(model: nn.Module, *, groups: Mapping[str, Sequence[torch.Tensor]] | None = None
                     ) -> dict[str, dict[str, float]]:
    """``{layer type: {mean, std, min, max}}`` over every multiplier value of that type, all blocks pooled.

    Layer types come from :func:`widthwise.diagnostics.naming.layer_type` (``attn.q_proj.row``, ``embed.col``);
    ``groups``: the model's :func:`multiplier_groups`, found beforehand. One host sync.
    """
    groups = multiplier_groups(model) if groups is None else groups
    if not groups:
        return {}
    rows = []
    for tensors in groups.values():
        values = torch.cat([t.detach().float().flatten() for t in tensors])
        std = values.std() if values.numel() > 1 else torch.zeros((), device=values.device)
        rows.append(torch.stack([values.mean(), std, values.min(), values.max()]))
    numbers = torch.stack(rows).tolist()
    return {key: dict(zip(("mean", "std", "min", "max"), row, strict=True))
            for key, row in zip(groups, numbers, strict=True)}


@torch.no_grad()
def multiplier_values(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every multiplier's values (a detached float32 CPU copy) by canonical name, e.g. for histograms."""
    return {name: site.param.detach().to("cpu", torch.float32, copy=True)
            for name, site in _multiplier_sites(model).items()}


def _rms(t: torch.Tensor) -> torch.Tensor:
    return t.detach().float().square().mean().sqrt()


def _geomean(scales: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack(scales).log().mean().exp()


class _Structure:
    """The matrices of a model by module name, their multipliers, and their slots (q, k, ...) by parent module."""

    def __init__(self, model: nn.Module, name_map: Mapping[str, str] | None) -> None:
        sites = parameter_sites(model)
        roles = classify(model, sites=sites)
        self.weights = {s.module_name: s for s in sites.values()
                        if s.tensor_name == "weight" and s.param.ndim >= 2 and s.multiplier_of is None}
        self.parts: dict[str, dict[str, torch.Tensor]] = {}
        for name, site in sites.items():
            if site.multiplier_of is not None:
                self.parts.setdefault(site.multiplier_of, {})[name.rpartition(".")[2]] = site.param
        self.embeddings = [m for m, s in self.weights.items()
                           if roles[s.name] is Role.EMBEDDING and isinstance(s.module, nn.Embedding)]
        self.heads = [m for m, s in self.weights.items() if roles[s.name] is Role.HEAD]
        regexes = {slot: re.compile(rx) for slot, rx in {**DEFAULT_NAME_MAP, **(name_map or {})}.items()}
        self.slots: dict[str, dict[str, list[str]]] = {}  # parent module -> slot -> module names
        for module_name in self.weights:
            parent, _, leaf = module_name.rpartition(".")
            slot = next((s for s, rx in regexes.items() if rx.search(leaf)), None)
            if slot is not None:
                self.slots.setdefault(parent, {}).setdefault(slot, []).append(module_name)

    def one(self, parent: str, slot: str) -> str | None:
        """The single matrix filling ``slot`` under ``parent``, or ``None`` (absent or ambiguous)."""
        found = self.slots.get(parent, {}).get(slot, [])
        return found[0] if len(found) == 1 else None

    def under(self, prefix: str, slot: str) -> list[str]:
        """Every matrix filling ``slot`` anywhere under the module ``prefix``."""
        inside = (slots for parent, slots in self.slots.items() if parent.startswith(prefix + "."))
        return [m for slots in inside for m in slots.get(slot, [])]

    def side_scale(self, module_name: str, part: str) -> torch.Tensor | None:
        """``rms(row) * |scalar|`` (``part="row"``) or ``rms(col) * |scalar|``; ``None`` without either."""
        parts = self.parts.get(self.weights[module_name].name, {})
        factors = [_rms(parts[p]) for p in (part, "scalar") if parts.get(p) is not None]
        return torch.stack(factors).prod() if factors else None


def _pair_monitors(st: _Structure, effective: Callable[[ParamSite], torch.Tensor]
                   ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``qk``, ``vo`` and ``up_down`` per attention/MLP module, as (numerator, denominator) scales."""
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for parent in st.slots:
        q, k = st.one(parent, "q"), st.one(parent, "k")
        if q and k:
            out[f"qk.{parent}"] = (_rms(effective(st.weights[q])), _rms(effective(st.weights[k])))
        for key, (a, b) in (("vo", ("v", "o")), ("up_down", ("up", "down"))):
            first, second = st.one(parent, a), st.one(parent, b)
            num = st.side_scale(first, "row") if first else None
            den = st.side_scale(second, "col") if second else None
            if num is not None and den is not None:
                out[f"{key}.{parent}"] = (num, den)
    return out


def _block_prefix(name: str) -> str | None:
    """``blocks.0.attn_norm`` -> ``blocks.0``: the name up to its first integer component, if any."""
    parts = name.split(".")
    index = next((i for i, p in enumerate(parts) if p.isdigit()), None)
    return None if index is None else ".".join(parts[: index + 1])


def _is_norm(module: nn.Module) -> bool:
    """A module whose own parameters are a 1-D ``weight`` (and perhaps a ``bias``): RMSNorm, LayerNorm."""
    params = dict(module.named_parameters(recurse=False))
    return "weight" in params and params["weight"].ndim == 1 and set(params) <= {"weight", "bias"}


def _norm_readers(model: nn.Module, st: _Structure, norm_readers: Mapping[str, Sequence[str]]) -> dict[str, list]:
    """Norm module name -> the matrices reading its output, for norms whose readers are known."""
    compiled = [(re.compile(rx), tuple(slots)) for rx, slots in norm_readers.items()]
    by_block: dict[str, list[str]] = {}
    found: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        if not name or not _is_norm(module):
            continue
        prefix = _block_prefix(name)
        parent, _, leaf = name.rpartition(".")
        if prefix is None and FINAL_NORM.search(leaf) and len(st.heads) == 1:
            found[name] = list(st.heads)
        elif prefix is not None and parent == prefix:
            by_block.setdefault(prefix, []).append(name)
    for prefix, norms in by_block.items():
        matched = {n: next((s for rx, s in compiled if rx.search(n.rpartition(".")[2])), None) for n in norms}
        if any(slots is None for slots in matched.values()):
            continue  # an unknown norm (a post-norm?) in this block: which norm feeds which layer is unclear
        for norm, slots in matched.items():
            hits = [st.under(prefix, slot) for slot in slots]
            if all(len(h) == 1 for h in hits):  # one reader per slot, or the readers are unclear
                found[norm] = [h[0] for h in hits]
    return found


def _norm_monitors(model: nn.Module, st: _Structure, readers_of: Mapping[str, list[str]]) -> dict:
    out = {}
    for norm, readers in readers_of.items():
        scales = [st.side_scale(r, "col") for r in readers]
        if scales and all(s is not None for s in scales):
            out[f"norm_vs_cols.{norm}"] = (_rms(model.get_submodule(norm).weight), _geomean(scales))
    return out


def _residual_monitor(st: _Structure) -> dict:
    o = [m for slots in st.slots.values() for m in slots.get("o", [])]
    down = [m for slots in st.slots.values() for m in slots.get("down", [])]
    if not o or not down:
        return {}
    scales = [st.side_scale(m, "row") for m in (*st.embeddings, *o, *down)]
    if any(s is None for s in scales):
        return {}
    return {"residual": (_geomean(scales), torch.ones((), device=scales[0].device))}


class SymmetryMonitor:
    """:func:`symmetry_drift` of one model, its structure (roles, slots, norm readers) found once: call it for the
    values at the model's current weights."""

    def __init__(self, model: nn.Module, name_map: Mapping[str, str] | None = None, *,
                 norm_readers: Mapping[str, Sequence[str]] | None = None) -> None:
        self.model = unwrap(model)
        self.structure = _Structure(self.model, name_map)
        self.readers = _norm_readers(self.model, self.structure, norm_readers or DEFAULT_NORM_READERS)

    @torch.no_grad()
    def __call__(self, effective: Callable[[ParamSite], torch.Tensor] = effective_weight) -> dict[str, float]:
        """The drift values now; ``effective`` gives the weight a layer applies (a caller that has built them
        already passes a lookup)."""
        st = self.structure
        pairs = {**_pair_monitors(st, effective), **_norm_monitors(self.model, st, self.readers),
                 **_residual_monitor(st)}
        if not pairs:
            return {}
        values = torch.stack([torch.stack(p).to(torch.float32) for p in pairs.values()]).cpu().tolist()
        return {key: math.log2(num / den) for key, (num, den) in zip(pairs, values, strict=True)
                if num != 0 and den != 0}


def symmetry_drift(
    model: nn.Module,
    name_map: Mapping[str, str] | None = None,
    *,
    norm_readers: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, float]:
    """``log2`` scale ratios along the forward-pass symmetries of ``model`` (see the module docstring).

    Keys: ``qk.<attention>``, ``vo.<attention>``, ``up_down.<mlp>``, ``norm_vs_cols.<norm>``, ``residual``; only
    the monitors that apply (a plain MLP gives ``{}``). Slots are found by :data:`widthwise.multipliers.
    DEFAULT_NAME_MAP` (``name_map`` overrides entries), norm readers by :data:`DEFAULT_NORM_READERS`
    (``norm_readers`` replaces it). No forward pass; one host sync. A side whose scale is exactly 0 (a
    zero-initialised matrix) gives no value. Measuring one model repeatedly: :class:`SymmetryMonitor`.
    """
    return SymmetryMonitor(model, name_map, norm_readers=norm_readers)()


def drift_warnings(drift: Mapping[str, float], threshold_log2: float = 3.0) -> list[str]:
    """One line per monitor beyond ``threshold_log2`` in absolute value (a factor 8 by default) or not finite."""
    lines = []
    for key, value in drift.items():
        if math.isfinite(value) and abs(value) <= threshold_log2:
            continue
        what = _MEANINGS.get(key.partition(".")[0], "a forward-pass symmetry")
        factor = f"a factor {2.0 ** abs(value):.3g}" if math.isfinite(value) else "a non-finite ratio"
        lines.append(f"{key} = {value:+.2f} (log2, {factor}) along {what}: the learnable multipliers are drifting "
                     "along a symmetry the loss cannot see (arXiv 2601.04890, section 4.3); raise "
                     "multipliers.weight_decay (the paper uses 2e-3)")
    return lines
