"""Model builders shared by the tests: small real models (HF LlamaForCausalLM, GPT-2, a plain MLP), built offline."""

from __future__ import annotations

import torch
from torch import nn

torch.set_num_threads(min(2, torch.get_num_threads()))


def llama_config(width: int = 64, layers: int = 2, vocab: int = 128, **kw):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
        num_attention_heads=max(1, width // 16), num_key_value_heads=max(1, width // 32),
        max_position_embeddings=64, **kw,
    )


def llama(width: int = 64, meta: bool = False, seed: int = 0, **kw) -> nn.Module:
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    if meta:
        with torch.device("meta"):
            return LlamaForCausalLM(llama_config(width, **kw))
    return LlamaForCausalLM(llama_config(width, **kw)).eval()


def gpt2(width: int = 64, seed: int = 0) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=128, n_positions=32, n_embd=width, n_layer=2, n_head=max(1, width // 16))
    return GPT2LMHeadModel(cfg).eval()


def mlp(width: int = 32, d_in: int = 8, d_out: int = 4, bias: bool = True) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(d_in, width, bias=bias), nn.ReLU(), nn.Linear(width, width, bias=bias), nn.ReLU(),
        nn.Linear(width, d_out, bias=bias),
    )


def tokens(batch: int = 2, seq: int = 12, vocab: int = 128, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, seq), generator=g)
