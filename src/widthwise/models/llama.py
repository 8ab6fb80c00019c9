"""A reference LLaMA-style decoder in one file: RMSNorm, RoPE, grouped-query attention, SwiGLU.

Numerically the same function as Hugging Face's ``LlamaForCausalLM`` (rotate-half RoPE, pre-norm residual
blocks, no biases), with three named forward multipliers in the spirit of Falcon-H1's:

- ``embedding_multiplier``: ``h0 = embed(idx) * embedding_multiplier``;
- ``head_multiplier``: ``logits = head(norm(h)) * head_multiplier`` (muP's ``1/m`` lives here), computed as
  ``head(norm(h) * head_multiplier)``: the head is linear and bias-free, and its input is ``vocab / width``
  times smaller than the logits;
- ``attention_scale``: the scale of ``q.k`` inside softmax (``None`` is ``1/sqrt(head_dim)``).

:func:`widthwise.forward.named_forward_multipliers` computes them from a recipe, so a trainer plans with
``ww.plan(model, base, recipe, forward_multipliers=False)`` and the library installs none of its own.

The constructor leaves PyTorch's default initialisation: the recipe's init comes from the plan
(``ww.init_weights(model, plan)``). Weights are always read through their modules, so
``torch.nn.utils.parametrize`` parametrizations (widthwise's learnable multipliers) act on every call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MLP", "Attention", "Block", "Llama", "LlamaConfig", "RMSNorm"]


@dataclass
class LlamaConfig:
    """Shape and forward multipliers of a :class:`Llama`. ``validate()`` names the field of an impossible shape.

    Width scaling needs every matrix to scale by one ratio, so ``ffn_hidden`` must be proportional to
    ``width`` across the model and its base: ``ffn_mult * width`` a multiple of ``multiple_of`` at both
    (8/3 at multiples of 96, or e.g. ``ffn_mult=3`` at multiples of 32); otherwise ``ww.plan`` refuses.
    """

    width: int  # d_model
    depth: int  # number of blocks
    heads: int
    kv_heads: int  # grouped-query attention: kv_heads divides heads
    vocab_size: int
    ffn_mult: float = 8 / 3  # SwiGLU hidden = ffn_mult * width rounded up to a multiple of multiple_of
    multiple_of: int = 32
    max_seq_len: int = 2048  # longest sequence forward accepts; generate crops its context to it
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    embedding_multiplier: float = 1.0
    head_multiplier: float = 1.0
    attention_scale: float | None = None  # None: 1/sqrt(head_dim)

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def ffn_hidden(self) -> int:
        """``ceil(ffn_mult * width / multiple_of) * multiple_of`` (192 for width 64)."""
        return math.ceil(self.ffn_mult * self.width / self.multiple_of - 1e-9) * self.multiple_of

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field (``model.<field>``) of an impossible configuration."""
        for f in ("width", "depth", "heads", "kv_heads", "vocab_size", "multiple_of", "max_seq_len"):
            value = getattr(self, f)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"model.{f}: must be a positive integer, got {value!r}")
        if self.width % self.heads:
            raise ValueError(f"model.heads: {self.heads} does not divide model.width={self.width}")
        if self.heads % self.kv_heads:
            raise ValueError(f"model.kv_heads: {self.kv_heads} does not divide model.heads={self.heads}")
        if self.head_dim % 2:
            raise ValueError(
                f"model.heads: head_dim = width/heads = {self.head_dim} is odd; RoPE needs an even head_dim"
            )
        positive = ["ffn_mult", "rope_theta", "norm_eps", "embedding_multiplier", "head_multiplier"]
        if self.attention_scale is not None:
            positive.append("attention_scale")
        for f in positive:
            value = getattr(self, f)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not (number and math.isfinite(value) and value > 0):
                raise ValueError(f"model.{f}: must be a positive finite number, got {value!r}")


class RMSNorm(nn.Module):
    """``x / rms(x) * weight``, computed in float32 and cast back to the input's dtype."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).type_as(x)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def rope_tables(seq_len: int, head_dim: int, theta: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)`` of shape ``(seq_len, head_dim)`` in float32, angles ``pos * theta^(-2i/head_dim)`` twice over.

    Computed per forward (a few kernels over ``seq_len x head_dim``) rather than cached in buffers: nothing
    to go stale after ``to_empty`` from the meta device or to lose precision under a dtype cast.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.arange(seq_len, device=device, dtype=torch.float32)[:, None] * inv_freq
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` of shape ``(B, H, T, D)`` by RoPE in the rotate-half convention (HF LLaMA)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


class Attention(nn.Module):
    """Causal grouped-query self-attention with RoPE on queries and keys.

    ``scale`` is the softmax scale passed to ``F.scaled_dot_product_attention``; ``head_dim`` is what
    widthwise's planner reads.
    """

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = config.heads, config.kv_heads, config.head_dim
        self.scale = config.attention_scale if config.attention_scale is not None else 1.0 / math.sqrt(self.head_dim)
        self.q_proj = nn.Linear(config.width, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.width, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.width, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, config.width, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        gqa = self.kv_heads != self.heads  # only when needed: not every SDPA backend supports enable_gqa
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale, enable_gqa=gqa)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))


class MLP(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.width, config.ffn_hidden, bias=False)
        self.up_proj = nn.Linear(config.width, config.ffn_hidden, bias=False)
        self.down_proj = nn.Linear(config.ffn_hidden, config.width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """Pre-norm residual block: ``h += attn(attn_norm(h)); h += mlp(mlp_norm(h))``."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.width, config.norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.width, config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = h + self.attn(self.attn_norm(h), cos, sin)
        return h + self.mlp(self.mlp_norm(h))


class Llama(nn.Module):
    """LLaMA-style decoder: ``embed`` -> ``blocks`` -> ``norm`` -> ``head`` (tied: ``head.weight is embed.weight``)."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.width)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm = RMSNorm(config.width, config.norm_eps)
        self.head = nn.Linear(config.width, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.head.weight = self.embed.weight

    def get_output_embeddings(self) -> nn.Module:
        """The output layer (HF's name for it; widthwise's role classification asks for it)."""
        return self.head

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, T, vocab)`` for token ids ``idx`` ``(B, T)``; with ``targets``, the mean cross-entropy.

        The loss is computed in float32; targets equal to -100 are ignored (``F.cross_entropy``'s default).
        """
        cfg = self.config
        t = idx.shape[1]
        if t > cfg.max_seq_len:
            raise ValueError(f"sequence length {t} exceeds model.max_seq_len={cfg.max_seq_len}")
        h = self.embed(idx)
        if cfg.embedding_multiplier != 1.0:
            h = h * cfg.embedding_multiplier
        cos, sin = rope_tables(t, cfg.head_dim, cfg.rope_theta, idx.device)
        for block in self.blocks:
            h = block(h, cos, sin)
        h = self.norm(h)
        if cfg.head_multiplier != 1.0:  # on the head's input (width wide), not its logits (vocab wide): same product
            h = h * cfg.head_multiplier
        logits = self.head(h)
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 0.8,
        top_k: int | None = 50,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Append ``max_new_tokens`` sampled tokens to ``idx`` ``(B, T)``; ``temperature=0`` is greedy.

        A plain loop without a KV cache: each step reruns the last ``max_seq_len`` tokens.
        """
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature!r}")
        for _ in range(max_new_tokens):
            logits = self(idx[:, -self.config.max_seq_len :])[:, -1, :].float()
            if temperature == 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None and top_k < logits.shape[-1]:
                    kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            idx = torch.cat((idx, nxt.to(idx.dtype)), dim=1)
        return idx

    def num_parameters(self, exclude_embedding: bool = True) -> int:
        """Unique parameters (a tied matrix once, multipliers included); by default without the input embedding.

        A tied embedding is also the head, a matrix multiply, so it is counted even then.
        """
        params = {id(p): p for p in self.parameters()}
        if exclude_embedding and not self.config.tie_embeddings:
            for p in self.embed.parameters():
                params.pop(id(p), None)
        return sum(p.numel() for p in params.values())

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward): ``6 * N + 12 * depth * width * seq_len``.

        ``N`` counts the weights of the matrix multiplies (attention and MLP projections and the head; the
        embedding is a lookup, norm gains and multipliers are negligible), computed from the config. The
        second term is ``q.k`` and ``attn.v`` (``2 * 2 * seq_len * width`` forward, times 3), counted without
        the causal mask's saving, as PaLM's MFU does (Chowdhery et al. 2022, Appendix B).
        """
        c = self.config
        attn = c.width * (c.heads + 2 * c.kv_heads) * c.head_dim + c.heads * c.head_dim * c.width
        mlp = 3 * c.width * c.ffn_hidden
        n = c.depth * (attn + mlp) + c.width * c.vocab_size
        return 6.0 * n + 12.0 * c.depth * c.width * seq_len
