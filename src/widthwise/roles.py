"""Parameter roles: which parameters are embeddings, hidden matrices, heads, vectors or multipliers.

Classification runs on the model as built (before DDP/FSDP wrapping) from, in order: user overrides
(regexes, first match wins), widthwise's own multipliers, dimensionality (any 0-/1-D parameter is a
``vector``), module types (``nn.Embedding`` -> ``embedding``; the module that HF's
``get_output_embeddings()`` returns -> ``head``), shapes compared with a base model (muP's rule: fixed
fan-in and scaled fan-out is input-like, scaled fan-in and fixed fan-out is output-like), then names.

A parameter shared by several modules (a head tied to the input embedding) is one parameter with one role:
``embedding``. The head's forward multiplier still applies to the head only.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from torch import nn

from .parametrizations import Multipliers


class Role(str, Enum):
    """What a parameter is, for the purpose of width scaling."""

    EMBEDDING = "embedding"
    HIDDEN = "hidden"
    HEAD = "head"
    VECTOR = "vector"
    MULTIPLIER = "multiplier"

    def __str__(self) -> str:
        return self.value


ROLE_NAMES = tuple(r.value for r in Role)
HEAD_MODULE_NAMES = ("lm_head", "head", "output", "readout", "unembed", "classifier", "score", "out_head")
EMBEDDING_NAME = re.compile(r"emb|wte$|wpe$")
_ORIGINAL = re.compile(r"^(?:(.*)\.)?parametrizations\.([^.]+)\.original$")
_IN_PARAMETRIZATION = re.compile(r"^(?:(.*)\.)?parametrizations\.([^.]+)\.(\d+)\.([^.]+)$")


def canonical_name(name: str) -> str:
    """The name a parameter has in the plain model: parametrizations are looked through.

    ``q.parametrizations.weight.original`` -> ``q.weight``; a parameter of a parametrization, e.g. a row
    multiplier ``q.parametrizations.weight.0.row``, becomes ``q.weight.row``.
    """
    if match := _ORIGINAL.match(name):
        prefix, tensor = match.groups()
        return f"{prefix}.{tensor}" if prefix else tensor
    if match := _IN_PARAMETRIZATION.match(name):
        prefix, tensor, _, leaf = match.groups()
        return f"{prefix}.{tensor}.{leaf}" if prefix else f"{tensor}.{leaf}"
    return name


def matrix_axes(module: nn.Module) -> tuple[int, int]:
    """``(out_axis, in_axis)`` of a module's weight seen as a linear map."""
    if isinstance(module, nn.Embedding):
        return 1, 0
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):  # transformers' GPT-2 Conv1D: x @ W
        return 1, 0
    return 0, 1


@dataclass
class ParamSite:
    """One unique parameter of a model and where it lives."""

    name: str  # canonical name
    param: nn.Parameter
    module: nn.Module  # the module whose attribute it is (the parametrized module for an original)
    module_name: str
    tensor_name: str
    aliases: list[str] = field(default_factory=list)  # other canonical names of the same tensor
    multiplier_of: str | None = None  # for a multiplier: canonical name of the weight it scales

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.param.shape)

    @property
    def all_names(self) -> list[str]:
        return [self.name, *self.aliases]


def _owner(model: nn.Module, actual: str) -> tuple[nn.Module, str, str, str | None]:
    """(owning module, its name, tensor name, multiplier target) for an actual parameter name."""
    if match := _ORIGINAL.match(actual):
        prefix, tensor = match.groups()
        return model.get_submodule(prefix or ""), prefix or "", tensor, None
    if match := _IN_PARAMETRIZATION.match(actual):
        prefix, tensor, index, _ = match.groups()
        module = model.get_submodule(prefix or "")
        holder = module.parametrizations[tensor][int(index)]
        target = f"{prefix}.{tensor}" if prefix else tensor
        return module, prefix or "", tensor, target if isinstance(holder, Multipliers) else None
    module_name, _, tensor = actual.rpartition(".")
    return model.get_submodule(module_name), module_name, tensor, None


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside ``torch.compile``, DDP or DataParallel wrappers (their names carry a prefix)."""
    while True:
        if isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def parameter_sites(model: nn.Module) -> dict[str, ParamSite]:
    """Every unique parameter of ``model`` by canonical name, in registration order, with its aliases."""
    model = unwrap(model)
    sites: dict[str, ParamSite] = {}
    by_id: dict[int, ParamSite] = {}
    for actual, param in model.named_parameters(remove_duplicate=False):
        name = canonical_name(actual)
        if id(param) in by_id:
            by_id[id(param)].aliases.append(name)
            continue
        module, module_name, tensor, target = _owner(model, actual)
        site = ParamSite(name, param, module, module_name, tensor, multiplier_of=target)
        sites[name] = by_id[id(param)] = site
    return sites


def declared_head(model: nn.Module) -> nn.Module | None:
    """The output layer a model declares (HF ``get_output_embeddings()``), if any."""
    getter = getattr(model, "get_output_embeddings", None)
    if not callable(getter):
        return None
    try:
        head = getter()
    except (NotImplementedError, AttributeError):
        return None
    return head if isinstance(head, nn.Module) else None


def name_parts(name: str) -> tuple[str, str]:
    """(last module component, tensor name) of a canonical parameter name."""
    module_name, _, tensor = name.rpartition(".")
    return module_name.rpartition(".")[2], tensor


def _module_of(model: nn.Module, name: str) -> nn.Module | None:
    module_name = name.rpartition(".")[0]
    try:
        return model.get_submodule(module_name)
    except AttributeError:
        return None


def _compile_overrides(roles: Mapping[str, str] | None) -> list[tuple[str, re.Pattern, Role]]:
    compiled = []
    for pattern, role in (roles or {}).items():
        if role not in ROLE_NAMES:
            raise ValueError(
                f"role override {pattern!r}: unknown role {role!r}; expected one of {', '.join(ROLE_NAMES)}"
            )
        try:
            compiled.append((pattern, re.compile(pattern), Role(role)))
        except re.error as err:
            raise ValueError(f"role override {pattern!r} is not a valid regex: {err}") from None
    return compiled


def fan_ratios(site: ParamSite, base_shape: tuple[int, ...] | None) -> tuple[float, float]:
    """(fan_out ratio, fan_in ratio) of a matrix against its base counterpart (1, 1 without a base)."""
    if base_shape is None:
        return 1.0, 1.0
    out_axis = matrix_axes(site.module)[0]
    fan_in = math.prod(d for i, d in enumerate(site.shape) if i != out_axis)
    base_fan_in = math.prod(d for i, d in enumerate(base_shape) if i != out_axis)
    return site.shape[out_axis] / base_shape[out_axis], fan_in / base_fan_in


def classify(
    model: nn.Module,
    roles: Mapping[str, str] | None = None,
    base_shapes: Mapping[str, tuple[int, ...]] | None = None,
    sites: Mapping[str, ParamSite] | None = None,
) -> dict[str, Role]:
    """Role of every unique parameter of ``model``, keyed by canonical name.

    ``roles`` maps regexes (``re.search`` on canonical names, aliases included) to role names; the first
    match wins and a pattern that matches no parameter is a ``ValueError``. ``base_shapes`` (canonical
    name -> shape in the base model) enables the muP shape rule for models without typed layers.
    """
    model = unwrap(model)
    sites = parameter_sites(model) if sites is None else sites
    overrides = _compile_overrides(roles)
    used: set[str] = set()
    head = declared_head(model)
    head_names = {
        name for name, site in sites.items()
        for n in site.all_names
        if site.tensor_name == "weight" and (
            (head is not None and _module_of(model, n) is head)
            or (head is None and name_parts(n)[0] in HEAD_MODULE_NAMES)
        )
    }
    result: dict[str, Role] = {}
    for name, site in sites.items():
        role = None
        for pattern, regex, override in overrides:
            if any(regex.search(n) for n in site.all_names):
                role = override
                used.add(pattern)
                break
        if role is None:
            role = _default_role(model, site, name in head_names, bool(head_names), base_shapes)
        result[name] = role
    unused = [p for p, _, _ in overrides if p not in used]
    if unused:
        raise ValueError(f"role override {unused[0]!r} matches no parameter of {type(model).__name__}")
    return result


def _default_role(
    model: nn.Module,
    site: ParamSite,
    is_declared_head: bool,
    model_has_head: bool,
    base_shapes: Mapping[str, tuple[int, ...]] | None,
) -> Role:
    if site.multiplier_of is not None:
        return Role.MULTIPLIER
    if site.param.ndim <= 1:
        return Role.VECTOR
    modules = [_module_of(model, n) for n in site.all_names]
    if any(isinstance(m, nn.Embedding) for m in modules) or isinstance(site.module, nn.Embedding):
        return Role.EMBEDDING
    if is_declared_head:
        return Role.HEAD
    base_shape = (base_shapes or {}).get(site.name)
    if base_shape is not None:
        out_ratio, in_ratio = fan_ratios(site, base_shape)
        if out_ratio != 1 and in_ratio == 1:
            return Role.EMBEDDING
        if in_ratio != 1 and out_ratio == 1 and not model_has_head:
            return Role.HEAD
        if in_ratio != 1 or out_ratio != 1:
            return Role.HIDDEN
    if any(EMBEDDING_NAME.search(part) for n in site.all_names for part in name_parts(n)):
        return Role.EMBEDDING
    return Role.HIDDEN

