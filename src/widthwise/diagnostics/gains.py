"""Sublayer gains ``g = rms(W x) / rms(x)`` (Fan et al. 2025, arXiv 2510.15262), measured with forward hooks.

Fan et al. keep ``g``, averaged over the matrix sublayers of all blocks, width-invariant by scaling weight decay
(``eta/lam ~ d^-1.5``); matching it between a proxy and its target confirms that the scaling transferred. One
no-grad forward pass over a small fixed batch measures every matrix layer and every attention/MLP block at once.
"""

from __future__ import annotations

import contextlib
import math
import re
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ForwardStopped
from ..roles import HEAD_MODULE_NAMES, Role, classify, parameter_sites, unwrap
from .naming import pool_by_layer_type

#: Block-level modules measured as a whole (output vs input): a regex ``re.search``-ed on module names.
DEFAULT_BLOCK_PATTERN = r"(^|\.)(attn|attention|self_attn|mlp|feed_forward|ffn)$"
_INPUT_KWARGS = ("hidden_states", "x", "input")


def matrix_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The modules that apply a hidden or head matrix (``nn.Linear``, HF ``Conv1D``, ...), by module name.

    Embeddings are left out (their input is token ids); a head tied to the embedding is found through its alias.
    """
    model = unwrap(model)
    sites = parameter_sites(model)
    roles = classify(model, sites=sites)
    layers: dict[str, nn.Module] = {}
    for name, site in sites.items():
        if site.param.ndim < 2 or roles[name] not in (Role.HIDDEN, Role.HEAD, Role.EMBEDDING):
            continue
        for alias in site.all_names:
            module_name = alias.rpartition(".")[0]
            if roles[name] is Role.EMBEDDING and alias == name:
                continue  # the embedding itself; only a tied head (an alias) is a matrix layer
            module = model.get_submodule(module_name)
            if module_name and not isinstance(module, nn.Embedding):
                layers[module_name] = module
    return layers


def block_modules(model: nn.Module, blocks: str = DEFAULT_BLOCK_PATTERN) -> dict[str, nn.Module]:
    """The modules whose name matches ``blocks`` (attention and MLP blocks by default), by module name."""
    regex = re.compile(blocks)
    return {name: m for name, m in unwrap(model).named_modules() if name and regex.search(name)}


def _input_tensor(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> torch.Tensor | None:
    """The first positional tensor argument, else the ``hidden_states`` keyword (HF), else ``None``."""
    for arg in args:
        if isinstance(arg, torch.Tensor):
            return arg
    return next((kwargs[k] for k in _INPUT_KWARGS if isinstance(kwargs.get(k), torch.Tensor)), None)


def _output_tensor(output: Any) -> torch.Tensor | None:
    """The output as returned, or the first element of a tuple (HF attention returns ``(out, weights)``)."""
    if isinstance(output, (tuple, list)) and output:
        output = output[0]
    return output if isinstance(output, torch.Tensor) else None


#: Elements per BLAS ``dot`` in :func:`_sum_squares`; longer tensors are summed in chunks of this size, the
#: chunks' sums added in float64 (one float32 ``dot`` over 33M elements was off by 5e-4, relative).
DOT_CHUNK = 1 << 20


def _sum_squares(x: torch.Tensor) -> torch.Tensor:
    """The sum of squares in float32: half precision upcast inside the reduction (no float32 copy); float32 by
    BLAS ``dot``, no temporary (2x faster than ``square().sum()`` on layer outputs of 64K-2M elements)."""
    x = x.detach()
    if x.dtype in (torch.float16, torch.bfloat16):
        return torch.linalg.vector_norm(x, dtype=torch.float32).square()
    flat = x.float().reshape(-1)
    if flat.numel() <= DOT_CHUNK:
        return torch.dot(flat, flat)
    return torch.stack([torch.dot(c, c) for c in flat.split(DOT_CHUNK)]).sum(dtype=torch.float64).float()


def _linear_output_squares(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``sum_t ||W x_t + b||^2`` over the rows ``x_t`` of ``x``, without forming the outputs (our derivation):

    ``<X^T X, W^T W> + 2 b^T W (sum_t x_t) + n ||b||^2``, in float32 (autocast off). For a head, ``X^T X`` and
    ``W^T W`` cost ``d^2 (n + V)`` multiply-adds against ``n d V`` for the logits (:func:`_gram_is_cheaper`).
    """
    with torch.autocast(x.device.type, enabled=False):
        x = x.detach().reshape(-1, x.shape[-1]).float()
        w = layer.weight.detach().float()
        total = ((x.T @ x) * (w.T @ w)).sum()
        if layer.bias is not None:
            b = layer.bias.detach().float()
            total = total + 2 * (b @ (w @ x.sum(0))) + x.shape[0] * (b @ b)
    return total


def _gram_is_cheaper(layer: nn.Module, x: torch.Tensor) -> bool:
    """Whether :func:`_linear_output_squares` costs fewer multiply-adds than applying ``layer`` to ``x``."""
    if type(layer) is not nn.Linear or x.shape[-1] != layer.in_features:
        return False
    n, d, v = x.numel() // x.shape[-1], layer.in_features, layer.out_features
    return d * (n + v) < n * v


def _call(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def _measure(model: nn.Module, modules: Mapping[str, nn.Module], batch: Any, stop_at: str | None = None,
             order: list[str] | None = None) -> dict[str, list]:
    """``{name: [(sum x^2, numel x, sum y^2, numel y), ...]}`` per call, from one eval-mode no-grad forward.

    Layers that read one tensor in a row (``q``/``k``/``v``, ``gate``/``up``) reduce it once: the last input
    and its sum of squares are kept (a reference, so the tensor cannot be freed and another take its place).
    ``stop_at``: a layer called once and after every other measured module (see :func:`sublayer_gains`): where
    :func:`_gram_is_cheaper`, its output's sum of squares comes from its input and weight and the forward stops
    there. ``order``: filled with the measured modules' names as they are called.
    """
    records: dict[str, list] = {name: [] for name in modules}
    last: list[Any] = [None, None]  # the last input tensor and its sum of squares

    def input_squares(x: torch.Tensor) -> torch.Tensor:
        if x is not last[0]:
            last[0], last[1] = x, _sum_squares(x)
        return last[1]

    def hook_for(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if order is not None:
                order.append(name)
            x, y = _input_tensor(args, kwargs), _output_tensor(output)
            if x is not None and y is not None:
                records[name].append((input_squares(x), x.numel(), _sum_squares(y), y.numel()))
        return hook

    def stop_before(module: nn.Module, args: tuple, kwargs: dict) -> None:
        x = _input_tensor(args, kwargs)
        if x is not None and _gram_is_cheaper(module, x):
            outputs = x.numel() // x.shape[-1] * module.out_features
            records[stop_at].append((input_squares(x), x.numel(), _linear_output_squares(module, x), outputs))
            if order is not None:
                order.append(stop_at)
            raise ForwardStopped

    modes = {m: m.training for m in model.modules()}
    handles = []
    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(hook_for(name), with_kwargs=True))
        if stop_at is not None:
            handles.append(modules[stop_at].register_forward_pre_hook(stop_before, with_kwargs=True))
        model.eval()
        with torch.no_grad(), contextlib.suppress(ForwardStopped):
            _call(model, batch)
    finally:
        last.clear()
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    return records


def _pooled_gains(records: Mapping[str, list]) -> dict[str, float]:
    """``rms(out) / rms(in)`` per module, sums of squares and counts pooled over calls; one host sync in all."""
    names = [n for n, calls in records.items() if calls]
    if not names:
        return {}
    sums = torch.stack([torch.stack([sum(c[i] for c in records[n]) for i in (0, 2)]) for n in names]).tolist()
    gains = {}
    for name, (sum_in, sum_out) in zip(names, sums, strict=True):
        n_in, n_out = (sum(c[i] for c in records[name]) for i in (1, 3))
        rms_in, rms_out = math.sqrt(sum_in / n_in), math.sqrt(sum_out / n_out)
        gains[name] = rms_out / rms_in if rms_in > 0 else float("nan")
    return gains


def sublayer_gains(model: nn.Module, batch: Any, *, blocks: str = DEFAULT_BLOCK_PATTERN,
                   modules: Mapping[str, nn.Module] | None = None, stop_at: str | None = None,
                   order: list[str] | None = None) -> dict[str, float]:
    """Fan et al.'s sublayer gain ``rms(W x) / rms(x)`` of every matrix layer and block, by module name.

    Matrix layers (:func:`matrix_layers`: ``blocks.0.attn.q_proj``, ``head``) compare their output, bias and
    multipliers included, with their input; block-level modules (names matching ``blocks``: ``blocks.0.attn``,
    ``model.layers.0.mlp``) compare their output (the first element of a tuple) with their first positional tensor
    argument or ``hidden_states`` keyword. rms is over all elements, in float32; a module called several times is
    pooled over its calls. ``batch``: a tensor (``model(batch)``), a tuple/list (``model(*batch)``) or a dict
    (``model(**batch)``).

    One no-grad forward pass in eval mode on the unwrapped model (``torch.compile``/DDP wrappers looked through,
    so the hooks fire and no gradient sync is triggered); hooks are removed and train/eval modes restored after.
    A zero input gives ``nan``. ``modules``: the modules to measure, as :func:`gain_modules` gives them (``blocks``
    is then not used).

    ``order``: a list the measured modules' names are appended to as they are called. ``stop_at``: the name of an
    ``nn.Linear`` (a head) that such a list showed to be called once, after every other measured module: its
    ``rms(W x)`` then comes from ``X^T X`` and ``W^T W`` where that is cheaper than the logits (a few tokens,
    a large vocabulary; equal to rounding) and the forward stops at it (the training monitor does this from its
    second measurement on).
    """
    inner = unwrap(model)
    modules = gain_modules(inner, blocks) if modules is None else modules
    if stop_at is not None and stop_at not in modules:
        raise ValueError(f"sublayer_gains: stop_at={stop_at!r} is not a measured module")
    return _pooled_gains(_measure(inner, modules, batch, stop_at, order))


def gain_modules(model: nn.Module, blocks: str = DEFAULT_BLOCK_PATTERN) -> dict[str, nn.Module]:
    """The modules :func:`sublayer_gains` measures, by name, in module order: the matrix layers, then the blocks.

    Finding them classifies the model's parameters; a caller measuring the same model repeatedly (the training
    monitor) finds them once and passes them as ``sublayer_gains(..., modules=...)``.
    """
    inner = unwrap(model)
    chosen = {**matrix_layers(inner), **block_modules(inner, blocks)}
    modules = {name: m for name, m in inner.named_modules() if name in chosen}  # in module order
    modules.update({name: m for name, m in chosen.items() if name not in modules})  # a module shared under 2 names
    return modules


def gain_summary(
    gains: Mapping[str, float],
    *,
    blocks: str = DEFAULT_BLOCK_PATTERN,
    head_names: Sequence[str] = HEAD_MODULE_NAMES,
) -> dict[str, float]:
    """Mean gain per layer type over blocks (``attn.q_proj``, ``mlp``, ``head``), plus ``matrix_mean``.

    ``matrix_mean`` is the mean over the hidden matrix sublayers, Fan et al.'s average: every entry except the
    block-level ones (names matching ``blocks``) and heads (last name component in ``head_names``).
    Non-finite gains are skipped.
    """
    summary = pool_by_layer_type(gains)
    regex = re.compile(blocks)
    hidden = [float(g) for name, g in gains.items()
              if math.isfinite(g) and not regex.search(name) and name.rpartition(".")[2] not in head_names]
    if hidden:
        summary["matrix_mean"] = statistics.fmean(hidden)
    return summary
