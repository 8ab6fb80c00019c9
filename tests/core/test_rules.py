"""Every scaling rule against values computed by hand."""

import math

import pytest

from widthwise import rules


@pytest.mark.parametrize(("m", "exponent", "expected"), [(1, 1, 1.0), (4, 1, 0.25), (8, 1, 0.125), (4, 0, 1.0),
                                                          (4, 0.5, 0.5), (0.5, 1, 2.0)])
def test_hidden_lr_factor(m, exponent, expected):
    assert rules.hidden_lr_factor(m, exponent) == pytest.approx(expected)


@pytest.mark.parametrize(("m", "exponent", "expected"), [(1, 0.5, 1.0), (4, 0.5, 2.0), (8, 0.5, 2.8284271247),
                                                          (4, 1, 4.0), (4, 0, 1.0), (16, 0.5, 4.0)])
def test_hidden_wd_factor(m, exponent, expected):
    assert rules.hidden_wd_factor(m, exponent) == pytest.approx(expected)


def test_robust_worked_example_from_the_paper():
    # arXiv 2510.15262: proxy d=512 (eta=3e-3, lam=0.1) -> target d=4096: eta=3.75e-4, lam=0.283.
    m = 4096 / 512
    assert 3e-3 * rules.hidden_lr_factor(m) == pytest.approx(3.75e-4)
    assert 0.1 * rules.hidden_wd_factor(m) == pytest.approx(0.28284, rel=1e-4)
    # the per-step shrink eta*lam falls as d^-1/2
    assert (3e-3 * rules.hidden_lr_factor(m)) * (0.1 * rules.hidden_wd_factor(m)) == pytest.approx(3e-4 / math.sqrt(8))


@pytest.mark.parametrize(("std", "m", "expected"), [(0.02, 1, 0.02), (0.02, 4, 0.01), (0.02, 16, 0.005),
                                                     (1.0, 9, 1 / 3)])
def test_hidden_init_std(std, m, expected):
    assert rules.hidden_init_std(std, m) == pytest.approx(expected)


def test_muP_init_equals_fan_in_init():
    # 1/sqrt(fan_in_base) * m^-1/2 == 1/sqrt(fan_in): muP's hidden init is fan-in init.
    assert rules.hidden_init_std(1 / math.sqrt(256), 1024 / 256) == pytest.approx(1 / math.sqrt(1024))


@pytest.mark.parametrize(("m", "expected"), [(1, 1.0), (2, 0.5), (8, 0.125)])
def test_output_multiplier(m, expected):
    assert rules.output_multiplier(m) == pytest.approx(expected)


def test_attention_query_multiplier():
    assert rules.attention_query_multiplier(64, 64, "standard") == 1.0
    assert rules.attention_query_multiplier(64, 64, "mup") == 1.0
    assert rules.attention_query_multiplier(256, 64, "mup") == pytest.approx(0.5)
    assert rules.attention_query_multiplier(64, 64, "mup_exact") == pytest.approx(0.125)
    # s * q.k / sqrt(d) == q.k / d in exact mode
    d = 128
    assert rules.attention_query_multiplier(d, 64, "mup_exact") / math.sqrt(d) == pytest.approx(1 / d)
    # base-matched mode: sqrt(d_base) / d
    assert rules.attention_query_multiplier(d, 64, "mup") / math.sqrt(d) == pytest.approx(math.sqrt(64) / d)


@pytest.mark.parametrize(("adjust", "lr_exponent", "wd_exponent"),
                         [("original", 0.0, 0.0), (None, 0.0, 0.0), ("match_rms_adamw", 0.5, 0.5)])
def test_muon_exponents(adjust, lr_exponent, wd_exponent):
    assert rules.muon_lr_exponent(adjust) == lr_exponent
    assert rules.muon_wd_exponent(adjust) == wd_exponent


def test_muon_noise_equilibrium_holds_init_scale():
    # Our derivation: rms(W)^2 = lr * s^2 / (2 * wd * max(rows, cols)) for Muon's adjustment s; with the width
    # exponents it must fall as 1/m, like muP's 1/fan_in init variance. Hand values at d_base=256, m=4.
    def rms2(lr, wd, d, adjust):
        s2 = 0.04 * d if adjust == "match_rms_adamw" else 1.0
        return lr * s2 / (2 * wd * d)
    for adjust in ("original", "match_rms_adamw"):
        lr = 0.02 * 4 ** -rules.muon_lr_exponent(adjust)
        wd = 0.1 * 4 ** rules.muon_wd_exponent(adjust)
        assert rms2(lr, wd, 1024, adjust) == pytest.approx(rms2(0.02, 0.1, 256, adjust) / 4)


def test_check_adjust_lr_fn():
    assert rules.check_adjust_lr_fn(None) == "original"
    assert rules.check_adjust_lr_fn("match_rms_adamw") == "match_rms_adamw"
    with pytest.raises(ValueError, match="unknown Muon adjust_lr_fn 'spectral'"):
        rules.check_adjust_lr_fn("spectral")


def test_muon_factors():
    assert rules.muon_lr_factor(4, "original") == 1.0
    assert rules.muon_lr_factor(4, None) == 1.0
    assert rules.muon_wd_factor(4, "original") == 1.0
    assert rules.muon_lr_factor(4, "match_rms_adamw") == pytest.approx(0.5)
    assert rules.muon_wd_factor(4, "match_rms_adamw") == pytest.approx(2.0)


def test_muon_match_rms_rule_cancels_torch_adjustment():
    # torch.optim.Muon scales by 0.2*sqrt(max(rows, cols)); lr factor * that must not depend on width.
    base, wide = (256, 256), (1024, 1024)
    m = 4
    adj = lambda shape: 0.2 * math.sqrt(max(shape))  # noqa: E731
    assert rules.muon_lr_factor(m, "match_rms_adamw") * adj(wide) == pytest.approx(adj(base))


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf")])
def test_bad_width_multiplier(bad):
    with pytest.raises(ValueError, match="width multiplier"):
        rules.hidden_lr_factor(bad)


def test_bad_modes():
    with pytest.raises(ValueError, match="attention scale"):
        rules.attention_query_multiplier(64, 64, "sqrt")
    with pytest.raises(ValueError, match="adjust_lr_fn"):
        rules.muon_lr_factor(2, "spectral")
    with pytest.raises(ValueError, match="head_dim"):
        rules.attention_query_multiplier(0, 64)
