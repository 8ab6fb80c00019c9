"""``widthwise export`` and ``ww.load_model``: a trained run as a plain Hugging Face model folder.

The learnable multipliers are folded into the weights (:func:`widthwise.fold_multipliers`), and so are the
recipe's fixed forward multipliers of the reference model (:mod:`widthwise.models.llama`): the embedding
multiplier into the embedding, the head's ``1/m`` into the head, the attention scale (over HF's
``1/sqrt(d_head)``) into the query projection, which RoPE leaves linear. A tied head keeps one matrix: the
embedding multiplier goes into it and the head's remaining factor into the final norm's gain (exact: the
logits are linear in that gain). The folder holds ``config.json``, ``model.safetensors``,
``generation_config.json``, the run's BPE tokenizer as a ``PreTrainedTokenizerFast`` and a model card
(``README.md``). Every export checks that the HF model's logits equal the run's (fp32) before writing.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import ExportError, RunError
from ..multipliers import fold_multipliers
from ..parametrizations import FixedScale
from .config import Config, apply_overrides
from .data import EOS
from .rundir import RunDir
from .session import unique_state_dict
from .setup import build, load_data

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

    from ..models.llama import Llama

__all__ = ["TOLERANCE", "export_run", "hf_tokenizer", "load_model", "to_hf_llama"]

#: Largest relative difference (max |delta| over max |logit|) an export accepts between HF's logits and the run's.
TOLERANCE = 1e-4
#: Sequences x tokens of the probe batch that checks an export.
PROBE_SHAPE = (2, 16)


def _hf_name(name: str) -> str:
    """The ``LlamaForCausalLM`` name of a reference-model parameter."""
    top = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
           "head.weight": "lm_head.weight"}
    if name in top:
        return top[name]
    _, layer, sub, *rest = name.split(".")
    sub = {"attn": "self_attn", "mlp": "mlp", "attn_norm": "input_layernorm",
           "mlp_norm": "post_attention_layernorm"}[sub]
    return ".".join(["model", "layers", layer, sub, *rest])


def to_hf_llama(model: Llama, eos_id: int = 0) -> PreTrainedModel:
    """The HF ``LlamaForCausalLM`` computing ``model``'s function, forward multipliers folded (fp32, eval mode).

    ``model`` must carry no multipliers (fold them first); :class:`ExportError` if it does.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = model.config
    state = {k: v.detach().float().clone() for k, v in model.state_dict().items()}
    left = [k for k in state if "parametrizations" in k]
    if left:
        raise ExportError(f"export: {left[0]} is still a multiplier; fold the multipliers first")
    query = (cfg.attention_scale if cfg.attention_scale is not None else cfg.head_dim**-0.5) * math.sqrt(cfg.head_dim)
    emb, head = cfg.embedding_multiplier, cfg.head_multiplier
    state["embed.weight"] = state["embed.weight"] * emb
    if cfg.tie_embeddings:  # one matrix, now e*W: the head's h/e goes into the final norm's gain
        state.pop("head.weight", None)
        state["norm.weight"] = state["norm.weight"] * (head / emb)
    else:
        state["head.weight"] = state["head.weight"] * head
    for i in range(cfg.depth):
        key = f"blocks.{i}.attn.q_proj.weight"
        state[key] = state[key] * query
    hf_cfg = LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.width, intermediate_size=cfg.ffn_hidden,
        num_hidden_layers=cfg.depth, num_attention_heads=cfg.heads, num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_dim, max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta}, tie_word_embeddings=cfg.tie_embeddings,
        attention_bias=False, mlp_bias=False, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id,
    )
    hf = LlamaForCausalLM(hf_cfg)
    missing, unexpected = hf.load_state_dict({_hf_name(k): v for k, v in state.items()}, strict=False)
    if unexpected or set(missing) - ({"lm_head.weight"} if cfg.tie_embeddings else set()):
        raise ExportError(f"export: the weights do not map onto LlamaForCausalLM ({(unexpected or missing)[0]!r})")
    hf.generation_config.bos_token_id = hf.generation_config.eos_token_id = eos_id
    hf.generation_config.pad_token_id = eos_id
    return hf.float().eval()


def fold_tied_head(model: nn.Module) -> float | None:
    """Move a tied head's fixed output multiplier (muP's ``1/m``) into the final norm's gain; return it.

    The shared matrix cannot carry the head's factor without changing the embedding's output, but the head reads
    ``norm(h)``, linear in the norm's gain (and bias), so scaling those instead is exact. ``None`` when the head
    is not tied or has no such multiplier; :class:`ExportError` when no final norm feeds the head.
    """
    from torch.nn.utils import parametrize

    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or embed is None or _stored(head) is not _stored(embed):
        return None
    if not parametrize.is_parametrized(head, "weight"):
        return None
    plist = head.parametrizations["weight"]
    scales = [p for p in plist if isinstance(p, FixedScale) and p.kind == "output"]
    if not scales:
        return None
    norm = _final_norm(model)
    if norm is None:
        raise ExportError(f"export: the head is tied to the embedding and carries a fixed x{scales[0].value:.6g} "
                          "output multiplier, but no final norm feeds it to carry that factor (a plain model "
                          "cannot express it); untie the embeddings or train with scaling.overrides "
                          "{output_exponent: 0}")
    if parametrize.is_parametrized(head, "bias"):
        raise ExportError("export: a tied head with a bias and an output multiplier cannot be folded exactly")
    value = math.prod(p.value for p in scales)
    with torch.no_grad():
        norm.weight.mul_(value)
        if getattr(norm, "bias", None) is not None:
            norm.bias.mul_(value)
    for p in scales:
        p.value = 1.0
    return value


def _stored(module: nn.Module) -> torch.Tensor:
    """The weight tensor a module stores (the parametrization's original where there is one)."""
    from torch.nn.utils import parametrize

    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations["weight"].original
    return module.weight


def _final_norm(model: nn.Module) -> nn.Module | None:
    """The norm right before the head of an HF causal LM (``model.norm``, ``transformer.ln_f``), if any."""
    base = getattr(model, "base_model", None)
    for name in ("norm", "ln_f", "final_layernorm", "final_layer_norm"):
        norm = getattr(base, name, None)
        if isinstance(norm, nn.Module) and isinstance(getattr(norm, "weight", None), torch.Tensor):
            return norm
    return None


def hf_tokenizer(tokenizer: Any) -> PreTrainedTokenizerFast:
    """A run's ``tokenizers.Tokenizer`` as a ``PreTrainedTokenizerFast`` (end of text as eos, bos and pad)."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, bos_token=EOS, pad_token=EOS,
                                  clean_up_tokenization_spaces=False)
    tok.model_max_length = 1 << 30
    return tok


def _checked_config(run: RunDir) -> Config:
    return apply_overrides(run.config(), ["train.compile=false", "train.dtype=float32", "train.progress=false",
                                          "train.device=cpu"])


def _trained_model(run: RunDir, step: int | None) -> tuple[Any, Config, int, str | None]:
    """The run's model at its latest checkpoint (or ``step``), on the CPU in fp32, the checkpoint's step and the
    fingerprint of the data (and tokenizer) it was trained on."""
    config = _checked_config(run)
    ckpt = run.checkpoint(step)
    if ckpt is None:
        raise RunError(f"export {run.path}: no checkpoint to export (the run wrote none yet)")
    bad = next((k for k, v in ckpt.model.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise ExportError(f"export {run.path}: checkpoint step {ckpt.step} has non-finite weights ({bad}); "
                          "a diverged run cannot be exported")
    vocab = run.resolved()["model"]["vocab_size"]
    built = build(config, vocab, torch.device("cpu"))
    model = built.model
    missing, unexpected = model.load_state_dict(ckpt.model, strict=False)
    shared = set(model.state_dict()) - set(unique_state_dict(model))
    if unexpected or set(missing) - shared:
        raise ExportError(f"export {run.path}: checkpoint step {ckpt.step} does not fit the run's model "
                          f"({(unexpected or sorted(set(missing) - shared))[0]!r})")
    return model.eval(), config, ckpt.step, ckpt.state.get("data_fingerprint")


def _to_hf(model: nn.Module) -> PreTrainedModel:
    """Fold everything and return the plain HF model (the reference model converted, an HF model unwrapped)."""
    from ..models.llama import Llama

    plain = model if isinstance(model, Llama) else getattr(model, "lm", model)
    if not isinstance(plain, Llama):
        fold_tied_head(plain)
    try:
        fold_multipliers(plain)
    except ValueError as err:
        raise ExportError(f"export: {err}") from None
    return to_hf_llama(plain) if isinstance(plain, Llama) else plain.float().eval()


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    from ..models.llama import Llama

    with torch.no_grad():
        out = model(ids)
    return (out if isinstance(model, Llama) else getattr(out, "logits", out)).float()


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b| / max |b|``: how far two sets of logits are apart, relative to their size."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _run_model(run: RunDir, step: int | None) -> tuple[PreTrainedModel, Any, dict[str, Any]]:
    """The run's plain HF model (checked against the run's own logits), its tokenizer and the card's facts."""
    model, config, at, fingerprint = _trained_model(run, step)
    vocab = run.resolved()["model"]["vocab_size"]
    ids = torch.randint(0, vocab, PROBE_SHAPE, generator=torch.Generator().manual_seed(0))
    expected = _logits(model, ids)
    hf = _to_hf(model)
    got = _logits(hf, ids)
    diff = relative_difference(got, expected)
    if not diff <= TOLERANCE:
        raise ExportError(f"export {run.path}: the plain model's logits differ from the run's by {diff:.2g} "
                          f"(relative; the limit is {TOLERANCE:g}); this model cannot be expressed exactly")
    data = load_data(config)
    if fingerprint is not None and fingerprint != data.fingerprint:
        raise ExportError(f"export {run.path}: the run's data or tokenizer changed since checkpoint step {at} was "
                          "written (fingerprints differ), so its tokenizer cannot be exported with it")
    facts = {"step": at, "logit_difference": diff, "config": config, "summary": run.summary() or {},
             "resolved": run.resolved(), "eos_id": data.eos_id}
    eos = data.eos_id
    for cfg in (hf.config, hf.generation_config):
        cfg.bos_token_id = cfg.eos_token_id = cfg.pad_token_id = eos
    return hf, hf_tokenizer(data.tokenizer), facts


def model_card(run: RunDir, facts: dict[str, Any]) -> str:
    """The ``README.md`` of an exported folder: what was trained, how, and how well."""
    c: Config = facts["config"]
    s, resolved = facts["summary"], facts["resolved"]
    base = resolved.get("scaling", {}).get("base_width") or c.scaling.base_width or c.model.width
    family = getattr(c.model, "family", "llama")
    rows = [
        ("model family", family), ("width", c.model.width), ("base width", base), ("depth", c.model.depth),
        ("heads / kv heads", f"{c.model.heads} / {c.model.kv_heads}"), ("tied embeddings", c.model.tie_embeddings),
        ("vocabulary", resolved.get("model", {}).get("vocab_size")), ("recipe", c.scaling.recipe),
        ("optimizer", c.optim.name), ("base lr / wd", f"{c.optim.lr:g} / {c.optim.weight_decay:g}"),
        ("learnable multipliers", f"{c.multipliers.kind} ({c.multipliers.placement}), folded"),
        ("checkpoint step", facts["step"]), ("tokens", s.get("tokens")), ("status", s.get("status")),
        ("validation loss", s.get("val_loss")), ("final train loss", s.get("final_train_loss")),
        ("export check", f"logits within {facts['logit_difference']:.2g} relative of the run's (fp32)"),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return (f"---\nlibrary_name: transformers\ntags: [widthwise, causal-lm]\n---\n\n# {run.path.name}\n\n"
            "A causal LM trained with [widthwise](https://example.invalid/widthwise) (width-robust pretraining: "
            "learnable multipliers, arXiv 2601.04890; layerwise LR/WD scaling, arXiv 2510.15262), exported as a "
            "plain transformers model: every multiplier is folded into the weights.\n\n"
            f"| field | value |\n|---|---|\n{table}\n\n"
            "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
            "model = AutoModelForCausalLM.from_pretrained(PATH)\ntokenizer = AutoTokenizer.from_pretrained(PATH)\n"
            "```\n\nThe run's config (as written, resolved values under `resolved:`) is in `widthwise_config.json`.\n")


def export_run(run_dir: Path, out: Path, step: int | None = None) -> dict[str, Any]:
    """Write the run's plain HF model, tokenizer and model card to ``out`` (new or empty); what was written."""
    run = RunDir.open(run_dir, "export")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunError(f"export --out {out}: already exists and is not empty; choose another folder")
    hf, tok, facts = _run_model(run, step)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one "Writing model shards" bar for a single file says nothing
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        hf.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "README.md").write_text(model_card(run, facts), encoding="utf-8")
        stored = {**facts["config"].to_dict(), "resolved": facts["resolved"], "step": facts["step"]}
        (tmp / "widthwise_config.json").write_text(json.dumps(stored, indent=1, default=str) + "\n", encoding="utf-8")
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"out": str(out), "step": facts["step"], "logit_difference": facts["logit_difference"],
            "architecture": type(hf).__name__, "files": sorted(p.name for p in out.iterdir())}


def load_model(path: str | Path, step: int | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """``(model, tokenizer)`` of a run directory (folded in memory, as ``export`` would write it) or of an HF
    folder (``widthwise export``'s output or any local transformers model); the model in eval mode."""
    path = Path(path)
    if (path / "config.yaml").is_file():
        hf, tok, _ = _run_model(RunDir.open(path, "load_model"), step)
        return hf, tok
    if (path / "config.json").is_file():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
            tok = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError, KeyError) as err:
            raise ExportError(f"load_model {path}: not a loadable transformers folder ({' '.join(str(err).split())})"
                              ) from None
        return model.eval(), tok
    raise RunError(f"load_model {path}: neither a widthwise run directory (config.yaml) nor an HF model folder "
                   "(config.json)")
