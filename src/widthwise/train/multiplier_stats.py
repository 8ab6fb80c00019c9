"""Summaries of the learnable multipliers by layer type, logged as training goes."""

from __future__ import annotations

import re

import torch
from torch import nn

from ..roles import parameter_sites

_BLOCK_INDEX = re.compile(r"(^|\.)\d+\.")


def layer_type(name: str) -> str:
    """``blocks.3.attn.q_proj.weight.row`` -> ``attn.q_proj.row``: the same slot in every block."""
    name = _BLOCK_INDEX.sub(r"\1", name)
    name = name.replace(".weight.", ".")
    return name.removeprefix("blocks.")


@torch.no_grad()
def multiplier_stats(model: nn.Module) -> dict[str, dict[str, float]]:
    """``{layer type: {mean, std, min, max}}`` over every multiplier value of that type (all blocks)."""
    groups: dict[str, list[torch.Tensor]] = {}
    for name, site in parameter_sites(model).items():
        if site.multiplier_of is not None:
            groups.setdefault(layer_type(name), []).append(site.param.detach().float().flatten())
    stats = {}
    for key, tensors in sorted(groups.items()):
        values = torch.cat(tensors)
        std = values.std().item() if values.numel() > 1 else 0.0
        stats[key] = {"mean": values.mean().item(), "std": std, "min": values.min().item(),
                      "max": values.max().item()}
    return stats
