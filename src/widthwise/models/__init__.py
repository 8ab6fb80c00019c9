"""Reference models built for widthwise: plain PyTorch, named so the planner recognises every layer."""

from .llama import Llama, LlamaConfig

__all__ = ["Llama", "LlamaConfig"]
