"""Names for diagnostics: pool the same slot of every block (``blocks.3.attn.q_proj`` -> ``attn.q_proj``)."""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Mapping

_BLOCK_INDEX = re.compile(r"(^|\.)\d+\.")
_BLOCK_CONTAINERS = ("blocks.", "model.layers.", "layers.", "transformer.h.", "h.")


def layer_type(name: str) -> str:
    """The slot a parameter or module fills in every block: block indices and ``.weight.`` dropped.

    ``blocks.3.attn.q_proj.weight.row`` -> ``attn.q_proj.row``, ``blocks.0.mlp.down_proj.weight`` ->
    ``mlp.down_proj``, ``embed.weight`` -> ``embed``; HF names lose ``model.layers.`` the same way.
    """
    name = _BLOCK_INDEX.sub(r"\1", name)
    name = name.replace(".weight.", ".").removesuffix(".weight")
    for prefix in _BLOCK_CONTAINERS:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def block_index(name: str) -> int | None:
    """The block a name belongs to (the first integer component), or ``None`` outside the blocks."""
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    return None


def pool_by_layer_type(values: Mapping[str, float]) -> dict[str, float]:
    """The mean of ``values`` over all blocks, per layer type; ``None``, non-finite values and anything not a number
    (a diverged run's logs hold ``"nan"``/``"inf"`` strings: JSON has no NaN) are skipped."""
    groups: dict[str, list[float]] = {}
    for name, value in values.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            groups.setdefault(layer_type(name), []).append(float(value))
    return {key: statistics.fmean(vals) for key, vals in sorted(groups.items())}


#: Display order of layer types: the input embedding, a block's matrices in forward order, the head.
LAYER_ORDER = ("embed", "attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
               "mlp.down_proj", "norm", "head")


def sort_layer_types(types) -> list[str]:
    """Unique layer types in :data:`LAYER_ORDER` (unknown ones after, alphabetically)."""
    return sorted(set(types), key=lambda t: (LAYER_ORDER.index(t) if t in LAYER_ORDER else len(LAYER_ORDER), t))
