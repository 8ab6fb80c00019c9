"""Reference models built for widthwise: plain PyTorch, named so the planner recognises every layer."""

from .llama import Llama, LlamaConfig, forward_multipliers

__all__ = ["Llama", "LlamaConfig", "forward_multipliers"]
