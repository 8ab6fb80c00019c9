"""``model.family: hf``: a transformers causal LM, built from ``model.hf_config``, trained by widthwise's trainer.

``model.hf_config`` names a transformers config class with Llama-style fields (``LlamaConfig``,
``MistralConfig``, ``Qwen2Config``, ...) and any of its other fields; the shape comes from ``model.*`` exactly as
for the reference model (hidden size ``model.width``, heads, KV heads, depth, the SwiGLU size, vocabulary, tied
embeddings, RoPE base, norm epsilon, context ``train.seq_len``), so ``scaling.base_width`` builds the base the
same way and ``train``, ``sweep``, ``diagnose`` and ``export`` apply. The recipe's forward multipliers (head
``1/m``, attention scale) are the library's parametrizations on the HF modules (``ww.plan``'s, not config
fields), and ``widthwise export`` folds them with the learnable multipliers into a plain model of the same class.

:class:`HFCausalLM` gives the HF model the reference model's interface (``model(idx, targets)`` returns the
logits or the loss, ``generate``, ``flops_per_token``, ``num_parameters``); its parameters are the HF model's
under ``lm.``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..models.llama import Llama, LlamaConfig

__all__ = ["OWNED_FIELDS", "HFCausalLM", "build_hf"]

#: HF config fields that ``model.*`` (and ``train.seq_len``) set: hf_config may not set them.
OWNED_FIELDS = {
    "hidden_size": "model.width", "intermediate_size": "model.ffn_mult", "num_hidden_layers": "model.depth",
    "num_attention_heads": "model.heads", "num_key_value_heads": "model.kv_heads", "head_dim": "model.heads",
    "vocab_size": "model.vocab_size", "tie_word_embeddings": "model.tie_embeddings",
    "max_position_embeddings": "train.seq_len", "rope_theta": "model.rope_theta", "rope_parameters": "model.rope_theta",
    "rms_norm_eps": "model.norm_eps",
}


class HFCausalLM(nn.Module):
    """A transformers causal LM (``lm``) with the reference model's interface; ``config``: its shapes."""

    def __init__(self, lm: nn.Module, config: LlamaConfig) -> None:
        super().__init__()
        self.lm = lm
        self.config = config

    def get_input_embeddings(self) -> nn.Module:
        return self.lm.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.lm.get_output_embeddings()

    @property
    def blocks(self) -> nn.ModuleList:
        """The decoder layers (what FSDP2 shards one by one)."""
        return self.lm.base_model.layers

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, T, vocab)``; with ``targets``, the mean cross-entropy in float32 (-100 ignored)."""
        logits = self.lm(input_ids=idx, use_cache=False).logits
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())

    generate = Llama.generate
    flops_per_token = Llama.flops_per_token

    def num_parameters(self, exclude_embedding: bool = True) -> int:
        """Unique parameters (a tied matrix once, multipliers included); by default without the input embedding."""
        params = {id(p): p for p in self.parameters()}
        if exclude_embedding and not self.config.tie_embeddings:
            for p in self.get_input_embeddings().parameters():
                params.pop(id(p), None)
        return sum(p.numel() for p in params.values())


def _config_class(name: Any) -> type:
    import transformers

    cls = getattr(transformers, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PretrainedConfig)):
        raise ConfigError(f"model.hf_config.class: {name!r} is not a transformers config class (e.g. LlamaConfig, "
                          "MistralConfig, Qwen2Config)")
    return cls


def hf_config_of(cfg: LlamaConfig, hf_config: Mapping[str, Any]) -> Any:
    """The transformers config of ``hf_config`` (``class`` and fields) at the shapes of ``cfg``."""
    fields = dict(hf_config)
    cls = _config_class(fields.pop("class", None))
    owned = next((k for k in fields if k in OWNED_FIELDS), None)
    if owned is not None:
        raise ConfigError(f"model.hf_config.{owned}: set by {OWNED_FIELDS[owned]}; remove it from hf_config")
    shape = dict(hidden_size=cfg.width, intermediate_size=cfg.ffn_hidden, num_hidden_layers=cfg.depth,
                 num_attention_heads=cfg.heads, num_key_value_heads=cfg.kv_heads, head_dim=cfg.head_dim,
                 vocab_size=cfg.vocab_size, tie_word_embeddings=cfg.tie_embeddings,
                 max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
                 rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta})
    try:
        default = cls()
    except (TypeError, ValueError):
        default = None
    lacking = next((k for k in shape if k not in ("rope_parameters", "head_dim") and not hasattr(default, k)), None)
    if lacking is not None:
        raise ConfigError(f"model.hf_config.class: {cls.__name__} does not take Llama-style fields (no {lacking}); "
                          "use a Llama-style config such as LlamaConfig, MistralConfig or Qwen2Config")
    unknown = next((k for k in fields if not hasattr(default, k)), None)
    if unknown is not None:  # transformers would keep it as an attribute that nothing reads
        raise ConfigError(f"model.hf_config.{unknown}: {cls.__name__} has no such field")
    try:
        config = cls(**shape, **fields)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model.hf_config: {cls.__name__} refuses these fields ({' '.join(str(err).split())})"
                          ) from None
    wrong = next((k for k, v in shape.items() if k != "rope_parameters" and getattr(config, k, None) != v), None)
    if wrong is not None:
        raise ConfigError(f"model.hf_config.class: {cls.__name__} does not take Llama-style fields ({wrong} is "
                          f"{getattr(config, wrong, None)!r}, model.* asks for {shape[wrong]!r})")
    config._attn_implementation = "sdpa"
    return config


def build_hf(cfg: LlamaConfig, hf_config: Mapping[str, Any]) -> HFCausalLM:
    """The HF causal LM of ``hf_config`` at the shapes of ``cfg`` (on the current default device)."""
    from transformers import AutoModelForCausalLM

    config = hf_config_of(cfg, hf_config)
    try:
        lm = AutoModelForCausalLM.from_config(config)
    except ValueError as err:
        raise ConfigError(f"model.hf_config.class: {type(config).__name__} has no causal LM ({err})") from None
    return HFCausalLM(lm, cfg)
