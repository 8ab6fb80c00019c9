"""Width-scaling rules as small pure functions.

Every function takes a width multiplier ``m = d / d_base`` (the ratio of a dimension in the model to the
same dimension in its base model) and returns a factor or a value. Factors multiply *base* values, the
hyperparameters that were tuned at the base width, so every rule returns exactly 1 at ``m == 1``.

Sources are cited per function; the exact statements are summarised in ``docs/science.md``.
"""

from __future__ import annotations

import math

__all__ = [
    "attention_query_multiplier",
    "check_adjust_lr_fn",
    "hidden_init_std",
    "hidden_lr_factor",
    "hidden_wd_factor",
    "muon_lr_exponent",
    "muon_lr_factor",
    "muon_wd_exponent",
    "muon_wd_factor",
    "output_multiplier",
]

OPTIMIZERS = ("adamw", "muon")
MUON_ADJUST_LR_FNS = ("original", "match_rms_adamw")
#: ``torch.optim.Muon``'s ``adjust_lr_fn`` that widthwise uses unless told otherwise: Muon's update RMS matches
#: AdamW's, so one base LR serves both optimizers.
DEFAULT_MUON_ADJUST_LR_FN = "match_rms_adamw"
ATTENTION_SCALES = ("standard", "mup", "mup_exact")


def _check_m(m: float) -> None:
    if not (isinstance(m, (int, float)) and math.isfinite(m) and m > 0):
        raise ValueError(f"width multiplier must be a positive finite number, got {m!r}")


def hidden_lr_factor(m: float, exponent: float = 1.0) -> float:
    """Adam learning-rate factor ``m ** -exponent`` for hidden (matrix-like) weights.

    muP for Adam: hidden weights take ``eta ~ 1/fan_in`` (Yang et al. 2022, "Tensor Programs V",
    arXiv 2203.03466, Table 3); Fan et al. 2025 (arXiv 2510.15262) keep the same ``eta ~ 1/d``.
    ``exponent=0`` is standard parametrization (one LR for every width).
    """
    _check_m(m)
    return m**-exponent


def hidden_wd_factor(m: float, exponent: float = 0.5) -> float:
    """Weight-decay factor ``m ** exponent`` for hidden weights (PyTorch-coupled AdamW decay).

    ``exponent=0.5`` is the robust rule of Fan et al. 2025 (arXiv 2510.15262): with ``eta ~ 1/d`` it keeps
    ``eta/lam ~ d^-1.5``, which holds the top singular value ``sigma_max ~ sqrt(eta/lam) d^0.75`` and the
    sublayer gain width-invariant. ``0`` keeps ``lam`` constant (Tensor Programs V does not scale it: preset
    ``mup_constant_wd``); ``1`` keeps ``eta*lam`` constant: microsoft/mup's ``MuAdamW`` (mup 1.0.0,
    ``mup/optim.py``: ``weight_decay *= width_mult`` beside ``lr /= width_mult``; preset ``mup``), CompleteP,
    Wang & Aitchison's timescale rule.
    """
    _check_m(m)
    return m**exponent


def hidden_init_std(base_std: float, m: float, exponent: float = 0.5) -> float:
    """Init standard deviation ``base_std * m ** -exponent`` of hidden weights.

    muP (Tensor Programs V, Table 3): hidden init variance ``~ 1/fan_in``, i.e. the std shrinks as
    ``m^-1/2`` (``m`` the fan-in ratio) from the value ``base_std`` used at the base width. This is the
    ``1/sqrt(fan_in)`` *law*, equal to ``1/sqrt(fan_in)`` itself only when ``base_std = 1/sqrt(base fan_in)``
    (0.02 is that at a base fan-in of 2,500, not at 64). ``exponent=0`` keeps the std fixed (GPT-2's 0.02).
    """
    _check_m(m)
    if not base_std > 0:
        raise ValueError(f"base init std must be positive, got {base_std!r}")
    return base_std * m**-exponent


def output_multiplier(m: float, exponent: float = 1.0) -> float:
    """Fixed forward multiplier ``m ** -exponent`` on the output (logit) layer.

    muP (Tensor Programs V, Table 3): the readout is multiplied by ``1/fan_in``; relative to the base
    width that is ``1/m``, with the head's init and Adam LR kept constant.
    """
    _check_m(m)
    return m**-exponent


def attention_query_multiplier(head_dim: int, base_head_dim: int, mode: str = "mup") -> float:
    """Fixed multiplier on the queries that turns ``q.k / sqrt(d_head)`` into muP's ``q.k / d_head`` form.

    Tensor Programs V (Sec. 4, "attention logit scaling") replaces the ``1/sqrt(d_head)`` attention scale by
    ``1/d_head``. Applied to a model that already divides by ``sqrt(d_head)``, a multiplier ``s`` on the
    queries gives logits ``s * q.k / sqrt(d_head)``:

    - ``"standard"``: ``s = 1`` (keep ``1/sqrt(d_head)``);
    - ``"mup"``: ``s = sqrt(base_head_dim / head_dim)``, so logits are ``sqrt(d_base) * q.k / d_head``:
      the ``1/d_head`` law, equal to the standard model at the base width (the convention of
      microsoft/mup, whose ``8/d_head`` equals ``1/sqrt(d_head)`` at ``d_head = 64``);
    - ``"mup_exact"``: ``s = 1/sqrt(head_dim)``, so logits are exactly ``q.k / d_head``.
    """
    if mode not in ATTENTION_SCALES:
        raise ValueError(f"unknown attention scale {mode!r}; expected one of {', '.join(ATTENTION_SCALES)}")
    for label, value in (("head_dim", head_dim), ("base_head_dim", base_head_dim)):
        if not (isinstance(value, int) and value > 0):
            raise ValueError(f"{label} must be a positive integer, got {value!r}")
    if mode == "standard":
        return 1.0
    if mode == "mup":
        return math.sqrt(base_head_dim / head_dim)
    return 1.0 / math.sqrt(head_dim)


def check_adjust_lr_fn(adjust_lr_fn: str | None) -> str:
    """``adjust_lr_fn`` as ``torch.optim.Muon`` resolves it (``None`` is ``"original"``); ValueError if unknown."""
    fn = "original" if adjust_lr_fn is None else adjust_lr_fn
    if fn not in MUON_ADJUST_LR_FNS:
        raise ValueError(
            f"unknown Muon adjust_lr_fn {adjust_lr_fn!r}; expected one of {', '.join(MUON_ADJUST_LR_FNS)}"
        )
    return fn


def muon_lr_exponent(adjust_lr_fn: str | None = "original") -> float:
    """Width exponent ``e`` of Muon's learning rate on hidden matrices, ``lr ~ m^-e``: the spectral rule.

    The spectral condition for feature learning (Yang, Simon & Bernstein 2023, arXiv 2310.17813) asks for
    ``||dW||_2 ~ sqrt(fan_out/fan_in)``, which is width-independent when both dimensions scale together.
    Muon's orthogonalised update has spectral norm 1 times ``torch.optim.Muon``'s own adjustment:

    - ``"original"``/``None``: ``sqrt(max(1, rows/cols))``, width-independent, so ``e = 0``;
    - ``"match_rms_adamw"``: ``0.2 * sqrt(max(rows, cols))``, which grows as ``sqrt(m)``, so ``e = 1/2``
      cancels it.

    Applying Adam's ``1/m`` on top would double-scale (Megatron-LM's observation; BRIEF section 4).
    """
    return 0.0 if check_adjust_lr_fn(adjust_lr_fn) == "original" else 0.5


def muon_wd_exponent(adjust_lr_fn: str | None = "original") -> float:
    """Width exponent ``e`` of Muon's (coupled) weight decay on hidden matrices, ``wd ~ m^e``.

    This is our derivation from a noise-only argument, not a published rule. A noise-driven Muon update has
    all singular values equal, so each step adds ``(lr * s)^2 * min(rows, cols)`` to ``||W||_F^2`` (``s`` is
    Muon's adjustment) while decay removes a fraction ``2 * lr * wd``. The equilibrium is
    ``rms(W)^2 = lr * s^2 / (2 * wd * max(rows, cols))`` (the Muon analogue of Kosson et al. 2024,
    arXiv 2305.17212). Keeping it at muP's ``1/fan_in`` init scale with the lr of :func:`muon_lr_exponent`
    needs ``e = 0`` for ``"original"`` and ``e = 1/2`` for ``"match_rms_adamw"``; in both cases ``lr * wd``
    stays constant. The argument ignores the gradient's signal; REPRODUCTION.md (claim 9) measures the rule
    at small scale (inconclusive on one seed: the least drift and regret of the rules tried). Every width-scaling
    preset (``mup``, ``mup_constant_wd``, ``robust``) uses it, so they coincide on Muon's hidden matrices
    (``lr x m^-1/2``, ``wd x m^1/2`` under ``"match_rms_adamw"``). Override it per recipe
    (``muon_wd_exponent``) or measure it (``widthwise calibrate``).
    """
    return 0.0 if check_adjust_lr_fn(adjust_lr_fn) == "original" else 0.5


def muon_lr_factor(m: float, adjust_lr_fn: str | None = "original") -> float:
    """Width factor ``m ** -muon_lr_exponent(adjust_lr_fn)`` for Muon's learning rate on hidden matrices."""
    _check_m(m)
    return m ** -muon_lr_exponent(adjust_lr_fn)


def muon_wd_factor(m: float, adjust_lr_fn: str | None = "original") -> float:
    """Width factor ``m ** muon_wd_exponent(adjust_lr_fn)`` for Muon's weight decay on hidden matrices."""
    _check_m(m)
    return m ** muon_wd_exponent(adjust_lr_fn)
