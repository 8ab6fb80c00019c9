"""The AdamW noise equilibrium: closed form against its series and against torch AdamW on pure noise."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from widthwise.app.config import load_config
from widthwise.app.setup import build
from widthwise.diagnostics.equilibrium import abm_trajectory, equilibrium_report, equilibrium_rms, relaxation_steps
from widthwise.diagnostics.matrices import matrix_sites

from helpers import mlp

VOCAB = 300


pytestmark = pytest.mark.usefixtures("one_thread")


def _series_equilibrium(lr: float, wd: float, b1: float, b2: float, terms: int = 3000) -> float:
    """The derivation in ``equilibrium_rms``'s docstring summed term by term (no geometric-series algebra).

    ``m = sum_j alpha_j z_{t-j}``, ``d = v - 1 = sum_j beta_j (z_{t-j}^2 - 1)``;
    ``Var(W) = lr^2 / (1 - a^2) * sum_h a^|h| C_u(h)`` with ``C_u = C_m + C_lin + C_quad``.
    """
    a = 1 - lr * wd
    j = torch.arange(terms, dtype=torch.float64)
    alpha, beta = (1 - b1) * b1**j, (1 - b2) * b2**j
    hs = range(300)

    def lag(x: torch.Tensor, y: torch.Tensor, h: int) -> torch.Tensor:  # x_n * y_{n+h}
        return x[: terms - h] * y[h:]

    var_d = 2 * float((beta * beta).sum())
    total = 0.0
    for h in hs:
        c_m = float(lag(alpha, alpha, h).sum())
        cov_d = 2 * float(lag(beta, beta, h).sum())
        quad = c_m * (0.75 * var_d + 0.25 * cov_d)  # 3/8 (d_0^2 + d_h^2) + d_0 d_h / 4
        # -1/2 E[m_0 m_h (d_0 + d_h)], E[z^2 (z^2 - 1)] = 2 for a Gaussian
        mm = lag(alpha, alpha, h)
        lin = -0.5 * 2 * float((mm * beta[: terms - h]).sum() + (mm * beta[h:]).sum())
        total += (1 if h == 0 else 2) * a**h * (c_m + quad + lin)
    return math.sqrt(lr * lr * total / (1 - a * a))


def test_first_order_by_hand():
    assert equilibrium_rms(0.01, 0.1, exact=False) == pytest.approx(math.sqrt(0.05))
    assert equilibrium_rms(3e-3, 0.1, exact=False, betas=(0.5, 0.5)) == pytest.approx(math.sqrt(0.015))


def test_exact_by_hand_without_second_moment_noise():
    # b2 -> 1: v is exactly 1, only the momentum filter remains.
    lr, wd, b1 = 0.1, 0.1, 0.9
    a = 0.99
    var = lr**2 * (0.1 / 1.9) * (1 + a * b1) / ((1 - a * b1) * (1 - a * a))
    assert equilibrium_rms(lr, wd, betas=(b1, 1 - 1e-9)) == pytest.approx(math.sqrt(var), rel=1e-6)
    # no momentum either: W <- a W - lr z, Var = lr^2 / (1 - a^2)
    assert equilibrium_rms(0.2, 0.5, betas=(0.0, 1 - 1e-9)) == pytest.approx(math.sqrt(0.04 / (1 - 0.81)), rel=1e-6)


@pytest.mark.parametrize("lr, wd, betas", [(0.1, 0.1, (0.9, 0.95)), (0.3, 0.1, (0.8, 0.99)), (0.02, 0.5, (0.0, 0.9))])
def test_closed_form_equals_its_series(lr, wd, betas):
    assert equilibrium_rms(lr, wd, betas=betas) == pytest.approx(_series_equilibrium(lr, wd, *betas), rel=1e-9)


def test_second_moment_correction_value():
    # betas (0.9, 0.95), lr wd -> 0: sum_h C_u = 1 + 0.0471 - 0.0690 (docstring terms at a = 1), RMS x0.9890
    lr, wd = 1e-4, 1e-4
    base = equilibrium_rms(lr, wd, betas=(0.9, 1 - 1e-12))
    assert equilibrium_rms(lr, wd, betas=(0.9, 0.95)) / base == pytest.approx(0.9890, abs=2e-4)
    assert base == pytest.approx(equilibrium_rms(lr, wd, exact=False), rel=1e-3)


def test_edge_cases():
    assert equilibrium_rms(1e-3, 0.0) == math.inf
    assert equilibrium_rms(0.0, 0.1) == 0.0
    assert equilibrium_rms(0.0, 0.0) == 0.0
    assert equilibrium_rms(1.0, 3.0) == math.inf  # lr wd >= 2: the decay overshoots, no equilibrium
    for bad in ((-1e-3, 0.1), (1e-3, -0.1)):
        with pytest.raises(ValueError):
            equilibrium_rms(*bad)
        with pytest.raises(ValueError):
            relaxation_steps(*bad)
    with pytest.raises(ValueError):
        equilibrium_rms(1e-3, 0.1, betas=(0.9, 1.0))
    assert relaxation_steps(0.01, 0.5) == pytest.approx(200.0)
    assert relaxation_steps(0.0, 0.5) == math.inf
    assert relaxation_steps(0.01, 0.0) == math.inf


def _tail_rms(trajectory: list[float], start: int) -> float:
    tail = trajectory[start:]
    return math.sqrt(sum(x * x for x in tail) / len(tail))


@pytest.mark.parametrize("betas", [(0.9, 0.95), (0.8, 0.99)])
def test_prediction_matches_torch_adamw_on_pure_noise(betas):
    ratios, first_order = [], []
    for seed, (lr, wd) in enumerate([(0.1, 0.1), (0.2, 0.075), (0.05, 0.4), (0.3, 0.1)]):  # lr wd 0.01 .. 0.03
        start = math.ceil(5 * relaxation_steps(lr, wd))
        eq = equilibrium_rms(lr, wd, betas=betas)
        trajectory = abm_trajectory([lr] * (start + 300), wd, init_std=eq, shape=(128, 128), betas=betas, seed=seed)
        sim = _tail_rms(trajectory, start)
        ratios.append(sim / eq)
        first_order.append(sim / equilibrium_rms(lr, wd, betas=betas, exact=False))
    assert all(abs(r - 1) < 0.01 for r in ratios), ratios
    assert abs(sum(ratios) / len(ratios) - 1) < 0.005, ratios  # without the b2 term: 0.992 at b2 = 0.95
    assert min(first_order) < 0.95  # the first-order formula would fail this test


def test_abm_relaxes_from_init_std_towards_equilibrium():
    lr, wd = 0.2, 0.1
    eq = equilibrium_rms(lr, wd)
    init = 4 * eq
    trajectory = abm_trajectory([lr] * 300, wd, init_std=init, shape=(128, 128), seed=3)
    assert len(trajectory) == 300
    assert trajectory[0] == pytest.approx(init, rel=0.03)
    a = 1 - lr * wd  # the initial weights decay as a^t, the noise fills in eq^2 (1 - a^(2t))
    for t, value in enumerate(trajectory, start=1):
        assert value == pytest.approx(math.sqrt(eq**2 + (init**2 - eq**2) * a ** (2 * t)), rel=0.05)
    coarse = trajectory[9:150:10]
    assert all(x > y for x, y in itertools.pairwise(coarse))
    assert _tail_rms(trajectory, 250) == pytest.approx(eq, rel=0.02)


def test_abm_every_samples_the_same_trajectory():
    lrs = [0.1] * 25
    full = abm_trajectory(lrs, 0.1, init_std=0.1, shape=(16, 16), seed=5)
    sampled = abm_trajectory(lrs, 0.1, init_std=0.1, shape=(16, 16), seed=5, every=10)
    assert sampled == [full[9], full[19], full[24]]
    assert abm_trajectory([], 0.1, init_std=0.1) == []


def test_abm_follows_the_schedule():
    lr, wd, n = 0.2, 0.1, 400
    constant = abm_trajectory([lr] * n, wd, init_std=0.5, shape=(64, 64), seed=2)
    decayed = abm_trajectory([lr] * (n // 2) + [lr * (1 - 0.9 * t / (n // 2)) for t in range(n // 2)], wd,
                             init_std=0.5, shape=(64, 64), seed=2)
    assert decayed[: n // 2] == constant[: n // 2]
    assert decayed[-1] < 0.8 * constant[-1]  # lagging behind sqrt(lr / 2 wd): relaxation slows as lr falls
    assert decayed[-1] > equilibrium_rms(lr * 0.1, wd)
    assert constant[-1] == pytest.approx(equilibrium_rms(lr, wd), rel=0.05)


def test_abm_muon_is_finite_positive_and_stationary():
    trajectory = abm_trajectory([0.5] * 160, 0.2, init_std=0.3, shape=(32, 64), optimizer="muon", momentum=0.5,
                                every=2)
    assert len(trajectory) == 80 and all(math.isfinite(x) and x > 0 for x in trajectory)
    late, later = _tail_rms(trajectory[40:60], 0), _tail_rms(trajectory[60:], 0)
    assert later == pytest.approx(late, rel=0.03)
    assert abs(trajectory[-1] - 0.3) > 0.05  # it moved away from the init to its own equilibrium
    with pytest.raises(ValueError, match="2-D"):
        abm_trajectory([0.1], 0.1, init_std=0.1, shape=(4, 4, 4), optimizer="muon")
    with pytest.raises(ValueError, match="optimizer"):
        abm_trajectory([0.1], 0.1, init_std=0.1, optimizer="sgd")


def test_abm_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    abm_trajectory([0.1] * 5, 0.1, init_std=0.1, shape=(8, 8))
    abm_trajectory([0.1] * 5, 0.1, init_std=0.1, shape=(8, 8), optimizer="muon")
    assert torch.equal(state, torch.get_rng_state())


@pytest.fixture(scope="module")
def tiny():
    return build(load_config("tiny"), VOCAB, torch.device("cpu"))


def _group_of(optimizer: torch.optim.Optimizer, name: str) -> dict:
    return next(g for g in optimizer.param_groups if name in g["names"])


def test_report_uses_the_real_param_groups(tiny):
    report = equilibrium_report(tiny.model, tiny.optimizer)
    sites = matrix_sites(tiny.model)
    assert list(report) == list(sites)
    hidden = "blocks.0.mlp.up_proj.weight"
    group = _group_of(tiny.optimizer, hidden)
    entry = report[hidden]
    assert group["weight_decay"] > 0 and group["lr_factor"] != 1  # robust recipe: width-scaled lr and wd
    assert entry["optimizer"] == "adamw" and entry["role"] == "hidden"
    assert (entry["lr"], entry["weight_decay"]) == (group["lr"], group["weight_decay"])
    assert entry["equilibrium_rms"] == pytest.approx(equilibrium_rms(group["lr"], group["weight_decay"],
                                                                     betas=group["betas"]))
    assert math.isfinite(entry["equilibrium_rms"])
    v = sites[hidden].param.detach()
    assert entry["rms"] == pytest.approx(float(v.pow(2).mean().sqrt()), rel=1e-6)
    assert entry["ratio"] == pytest.approx(entry["rms"] / entry["equilibrium_rms"])
    assert entry["relaxation_steps"] == pytest.approx(1 / (group["lr"] * group["weight_decay"]))
    for name in ("embed.weight", "head.weight"):  # vector-like under the robust recipe: no decay
        assert report[name]["weight_decay"] == 0.0
        assert report[name]["equilibrium_rms"] is None and report[name]["ratio"] is None
        assert report[name]["relaxation_steps"] == math.inf
    override = equilibrium_report(tiny.model, tiny.optimizer, betas=(0.5, 0.999))[hidden]
    assert override["equilibrium_rms"] == pytest.approx(equilibrium_rms(group["lr"], group["weight_decay"],
                                                                        betas=(0.5, 0.999)))


def test_report_follows_the_current_learning_rate(tiny):
    hidden = "blocks.1.attn.o_proj.weight"
    group = _group_of(tiny.optimizer, hidden)
    saved = group["lr"]
    try:
        group["lr"] = saved * 3
        entry = equilibrium_report(tiny.model, tiny.optimizer)[hidden]
        assert entry["lr"] == saved * 3
        assert entry["equilibrium_rms"] == pytest.approx(equilibrium_rms(saved * 3, group["weight_decay"]))
    finally:
        group["lr"] = saved


def test_report_with_muon_and_plain_adamw():
    built = build(load_config("tiny", ["optim.name=muon"]), VOCAB, torch.device("cpu"))
    report = equilibrium_report(built.model, built.optimizer)
    hidden = report["blocks.0.attn.q_proj.weight"]
    assert hidden["optimizer"] == "muon" and hidden["weight_decay"] > 0
    assert hidden["equilibrium_rms"] is None and hidden["ratio"] is None
    assert math.isfinite(hidden["relaxation_steps"])
    assert report["embed.weight"]["optimizer"] == "adamw"

    model = mlp(width=16)
    first = model[0].weight
    opt = torch.optim.AdamW([first], lr=1e-2, weight_decay=0.1)  # the other layers are not optimized: skipped
    plain = equilibrium_report(model, opt)
    assert list(plain) == ["0.weight"]
    assert plain["0.weight"]["role"] is None
    assert plain["0.weight"]["equilibrium_rms"] == pytest.approx(equilibrium_rms(1e-2, 0.1, betas=(0.9, 0.999)))
    sgd = equilibrium_report(model, torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.1))
    assert {e["optimizer"] for e in sgd.values()} == {"sgd"} and len(sgd) == 3
    assert all(e["equilibrium_rms"] is None for e in sgd.values())
