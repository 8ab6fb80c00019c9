"""Spectral diagnostics: power iteration against exact SVD, warm starts, effective vs stored weights."""

from __future__ import annotations

import math

import pytest
import torch

from widthwise.app.config import load_config
from widthwise.app.setup import build
from widthwise.diagnostics import spectra
from widthwise.diagnostics.matrices import effective_weight, matrix_sites
from widthwise.diagnostics.spectra import (
    rms,
    rms_values,
    singular_values,
    spectral_summary,
    stable_rank,
    stable_ranks,
    top_singular_values,
)

from helpers import mlp

VOCAB = 300


pytestmark = pytest.mark.usefixtures("one_thread")


def _trained_reference(steps: int = 5):
    built = build(load_config("tiny"), VOCAB, torch.device("cpu"))
    g = torch.Generator().manual_seed(3)
    for _ in range(steps):
        x = torch.randint(0, VOCAB, (4, 33), generator=g)
        loss = built.model(x[:, :-1], x[:, 1:])
        built.optimizer.zero_grad()
        loss.backward()
        built.optimizer.step()
        built.scheduler.step()
    return built


@pytest.fixture(scope="module")
def reference():
    return _trained_reference()


def _gaussian(shape: tuple[int, int], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _exact_top(tensors: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(torch.linalg.svdvals(t.reshape(t.shape[0], -1).double())[0]) for k, t in tensors.items()}


def _max_rel_error(estimate: dict[str, float], exact: dict[str, float]) -> float:
    assert estimate.keys() == exact.keys()
    return max(abs(estimate[k] / exact[k] - 1) for k in exact)


def test_power_iteration_matches_svd_on_gaussian_matrices():
    # Square Gaussian matrices have nearly degenerate top singular values (ratio ~0.98-0.998): the hard case.
    shapes = [(256, 256), (128, 512), (512, 128), (64, 1024)]
    tensors = {f"{s}-{seed}": _gaussian(s, seed) for s in shapes for seed in range(3)}
    exact = _exact_top(tensors)
    gaps = [float(s[1] / s[0]) for s in singular_values(tensors).values()]
    assert max(gaps) > 0.98
    assert _max_rel_error(top_singular_values(tensors, warm_start=False), exact) < 0.01


def test_power_iteration_finds_a_planted_spike():
    noise = _gaussian((256, 128), 1) / math.sqrt(256)  # bulk edge ~ 1 + sqrt(1/2)
    u, v = _gaussian((256, 1), 2), _gaussian((1, 128), 3)
    spiked = {"spike": noise + 3.0 * (u @ v) / (u.norm() * v.norm())}
    exact = _exact_top(spiked)
    assert exact["spike"] > 3.0
    assert _max_rel_error(top_singular_values(spiked, warm_start=False), exact) < 1e-3
    assert spectra.last_iterations["spike"] < 20  # a separated spike converges fast


def test_power_iteration_matches_svd_on_trained_reference_model(reference):
    model = reference.model
    for which in ("effective", "stored"):
        estimate = top_singular_values(model, which=which, warm_start=False)
        exact = {k: float(s[0]) for k, s in singular_values(model, which=which).items()}
        assert set(estimate) == set(matrix_sites(model)) == set(exact)
        assert "blocks.0.attn.q_proj.weight" in estimate
        assert _max_rel_error(estimate, exact) < 0.01


def test_warm_start_converges_in_far_fewer_iterations():
    w = _gaussian((256, 256), 7)
    top_singular_values({"w": w}, warm_start=False)
    cold = spectra.last_iterations["w"]
    with torch.no_grad():
        w.add_(_gaussian((256, 256), 8), alpha=1e-3)  # a training step's worth of change
    sigma = top_singular_values({"w": w})["w"]
    warm = spectra.last_iterations["w"]
    assert cold >= 12
    assert warm <= 4 and warm * 3 <= cold
    assert sigma == pytest.approx(_exact_top({"w": w})["w"], rel=0.01)
    top_singular_values({"w": w}, warm_start=False)
    assert spectra.last_iterations["w"] >= 12  # warm_start=False really starts cold


def test_warm_start_on_a_model_is_kept_per_parameter_and_which(reference):
    model = reference.model
    top_singular_values(model, which="stored", warm_start=False)
    top_singular_values(model, which="effective", warm_start=False)
    top_singular_values(model, which="stored")
    assert max(spectra.last_iterations.values()) <= spectra.MIN_WARM_ITERS


def test_shape_change_restarts_cold():
    w = _gaussian((64, 32), 0)
    top_singular_values({"w": w})
    w.set_(_gaussian((16, 40), 1))  # same tensor object (the warm-start key), new shape
    assert top_singular_values({"w": w})["w"] == pytest.approx(_exact_top({"w": w})["w"], rel=0.01)


def test_effective_differs_from_stored_and_matches_its_svd(reference):
    model = reference.model
    name = "blocks.1.mlp.down_proj.weight"
    site = matrix_sites(model)[name]
    mults = site.module.parametrizations.weight[0]
    with torch.no_grad():
        saved_row, saved_col = mults.row.clone(), mults.col.clone()
        mults.row.copy_(torch.linspace(0.5, 2.0, mults.row.numel()))
        mults.col.copy_(torch.linspace(3.0, 0.2, mults.col.numel()))
    try:
        v = site.param.detach().double()
        by_hand = mults.row.detach().double()[:, None] * v * mults.col.detach().double()[None, :]
        effective = top_singular_values(model, which="effective", warm_start=False)[name]
        stored = top_singular_values(model, which="stored", warm_start=False)[name]
        exact_eff = float(singular_values(model, which="effective")[name][0])
        assert torch.allclose(effective_weight(site).double(), by_hand, rtol=1e-6)
        assert effective == pytest.approx(float(torch.linalg.svdvals(by_hand)[0]), rel=0.01)
        assert exact_eff == pytest.approx(float(torch.linalg.svdvals(by_hand)[0]), rel=1e-5)
        assert stored == pytest.approx(float(torch.linalg.svdvals(v)[0]), rel=0.01)
        assert abs(effective / stored - 1) > 0.2
        assert rms_values(model, which="effective")[name] == pytest.approx(rms(by_hand), rel=1e-5)
        assert rms_values(model, which="stored")[name] == pytest.approx(rms(v), rel=1e-6)
    finally:
        with torch.no_grad():
            mults.row.copy_(saved_row)
            mults.col.copy_(saved_col)


def test_global_rng_untouched(reference):
    state = torch.get_rng_state()
    top_singular_values(reference.model, warm_start=False)
    top_singular_values({"a": torch.ones(5, 3), "b": torch.zeros(2, 2)}, warm_start=False)
    spectral_summary(reference.model)
    assert torch.equal(state, torch.get_rng_state())


def test_cold_start_is_deterministic():
    w = {"w": _gaussian((200, 150), 4)}
    first = top_singular_values(w, warm_start=False, tol=1e-2)
    second = top_singular_values({"w": w["w"].clone()}, warm_start=False, tol=1e-2)
    assert first == second


def test_mapping_input_flattens_and_rejects_vectors():
    conv = _gaussian((8, 12), 5).reshape(8, 3, 4)
    result = top_singular_values({"conv": conv}, warm_start=False, tol=1e-7)
    assert result["conv"] == pytest.approx(float(torch.linalg.svdvals(conv.reshape(8, 12))[0]), rel=1e-4)
    assert singular_values({"conv": conv})["conv"].shape == (8,)
    with pytest.raises(ValueError, match="'bias'"):
        top_singular_values({"w": conv, "bias": torch.ones(3)})
    with pytest.raises(ValueError, match="which"):
        top_singular_values({"w": conv}, which="both")


def test_zero_matrix():
    zeros = {"z": torch.zeros(16, 8)}
    assert top_singular_values(zeros) == {"z": 0.0}
    assert top_singular_values(zeros) == {"z": 0.0}  # warm start from a zero matrix's vector
    summary = spectral_summary(zeros)["z"]
    assert summary["sigma_max"] == 0.0 and summary["frobenius"] == 0.0 and summary["rms"] == 0.0
    assert math.isnan(summary["stable_rank"]) and math.isnan(stable_rank(zeros["z"]))


def test_singular_values_are_exact_and_descending():
    w = _gaussian((40, 30), 6)
    s = singular_values({"w": w})["w"]
    assert s.dtype == torch.float32 and s.device.type == "cpu"
    assert torch.all(s[:-1] >= s[1:])
    assert torch.allclose(s.double(), torch.linalg.svdvals(w.double()), rtol=1e-5)


def test_stable_rank_and_rms_by_hand():
    diag = torch.diag(torch.tensor([4.0, 2.0, 1.0]))
    assert stable_rank(diag) == pytest.approx((16 + 4 + 1) / 16)
    assert rms(diag) == pytest.approx(math.sqrt(21 / 9))
    assert stable_rank(torch.ones(6, 5)) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        stable_rank(torch.ones(4))


def test_summary_on_a_model_is_consistent():
    model = mlp(width=32)
    summary = spectral_summary(model, exact=True)
    names = [n for n, _ in model.named_parameters() if n.endswith("weight")]
    assert list(summary) == names
    for name, weight in model.named_parameters():
        if name not in summary:
            continue
        s = summary[name]
        assert s["sigma_max"] == pytest.approx(float(torch.linalg.svdvals(weight.detach())[0]), rel=1e-5)
        assert s["frobenius"] == pytest.approx(float(weight.detach().norm()), rel=1e-5)
        assert s["stable_rank"] == pytest.approx(stable_rank(weight), rel=1e-4)
        assert s["rms"] == pytest.approx(rms(weight))
    approx = stable_ranks(model)
    assert approx.keys() == summary.keys()
    assert all(approx[k] == pytest.approx(summary[k]["stable_rank"], rel=0.02) for k in approx)


# Batches: matrices of one shape (up to transposition) are iterated together, each to its own convergence.

MIXED_SHAPES = [(96, 64)] * 3 + [(64, 96)] * 2 + [(50, 50)] * 3 + [(200, 50), (40, 3)]  # the last two alone


def _mixed(seed: int = 0) -> dict[str, torch.Tensor]:
    return {f"m{i}-{shape}": _gaussian(shape, seed + i) for i, shape in enumerate(MIXED_SHAPES)}


def _one_matrix_at_a_time(w: torch.Tensor, tol: float) -> tuple[float, int]:
    """The algorithm on one matrix, written plainly: cold block power iteration on the smaller side."""
    a = w if w.shape[0] >= w.shape[1] else w.T
    v = spectra._cold_block(a.shape[1], min(spectra.BLOCK, a.shape[1]), tuple(w.shape), w.device)
    sigma = 0.0
    for iters in range(1, 201):
        q = torch.linalg.qr(a.T @ (a @ v)).Q
        new = float(torch.linalg.svdvals(a @ q)[0])  # the top Ritz value
        if abs(new - sigma) <= tol * new:
            return new, iters
        sigma, v = new, q
    return sigma, 200


def test_a_batch_matches_svd_and_each_matrix_alone():
    tensors = _mixed()
    assert [len(batch) for batch in spectra._batches({k: (t, t) for k, t in tensors.items()})] == [5, 3, 1, 1]
    batched = top_singular_values(tensors, warm_start=False, tol=1e-6)
    iterations = dict(spectra.last_iterations)
    assert _max_rel_error(batched, _exact_top(tensors)) < 1e-3
    for name, w in tensors.items():
        sigma, iters = _one_matrix_at_a_time(w, tol=1e-6)
        assert batched[name] == pytest.approx(sigma, rel=1e-5)
        assert abs(iterations[name] - iters) <= 1, name  # float rounding may move the stop by one
    assert len(set(iterations.values())) > 3  # each stopped on its own


def test_a_matrix_result_does_not_depend_on_its_batch(monkeypatch):
    tensors = _mixed(seed=10)
    together = top_singular_values(tensors, warm_start=False)
    iterations = dict(spectra.last_iterations)
    monkeypatch.setattr(spectra, "CPU_BATCH_BYTES", 1)  # one matrix per batch
    assert all(len(batch) == 1 for batch in spectra._batches({k: (t, t) for k, t in tensors.items()}))
    alone = top_singular_values(tensors, warm_start=False)
    assert spectra.last_iterations == iterations
    assert all(alone[name] == pytest.approx(together[name], rel=1e-6) for name in tensors)


def test_nan_and_zero_matrices_leave_the_rest_of_their_batch_alone():
    good = {f"g{i}": _gaussian((64, 32), i) for i in range(3)}
    reference = top_singular_values(good, warm_start=False)
    counts = dict(spectra.last_iterations)
    nan, inf = _gaussian((64, 32), 9), _gaussian((32, 64), 9)
    nan[5, 7], inf[0, 0] = math.nan, math.inf
    mixed = {"nan": nan, **good, "zero": torch.zeros(64, 32), "inf": inf}
    result = top_singular_values(mixed, warm_start=False)
    assert math.isnan(result["nan"]) and math.isnan(result["inf"]) and result["zero"] == 0.0
    assert {k: spectra.last_iterations[k] for k in ("nan", "inf", "zero")} == {"nan": 0, "inf": 0, "zero": 1}
    assert {k: spectra.last_iterations[k] for k in good} == counts
    assert all(result[k] == pytest.approx(reference[k], rel=1e-6) for k in good)


def test_a_non_finite_matrix_keeps_its_warm_start():
    w = _gaussian((64, 32), 3)
    top_singular_values({"w": w})
    subspace = spectra._WARM["mapping"][w].clone()
    saved = w.clone()
    with torch.no_grad():
        w[0, 0] = math.nan
    assert math.isnan(top_singular_values({"w": w, "other": _gaussian((64, 32), 4)})["w"])
    assert torch.equal(spectra._WARM["mapping"][w], subspace)
    with torch.no_grad():
        w.copy_(saved)
    top_singular_values({"w": w})
    assert spectra.last_iterations["w"] == spectra.MIN_WARM_ITERS  # still warm


def test_warm_and_cold_members_of_a_batch_keep_their_own_iteration_counts():
    warm = {f"w{i}": _gaussian((128, 96), i) for i in range(3)}
    top_singular_values(warm, warm_start=False)
    cold_counts = dict(spectra.last_iterations)
    with torch.no_grad():
        for i, w in enumerate(warm.values()):
            w.add_(_gaussian((128, 96), 10 + i), alpha=1e-3)  # a training step's worth of change
    fresh = {"cold": _gaussian((96, 128), 20)}  # same batch, transposed
    top_singular_values({"cold": fresh["cold"].clone()})  # another key: the batch below starts it cold too
    fresh_count = spectra.last_iterations["cold"]
    result = top_singular_values({**warm, **fresh})
    counts = dict(spectra.last_iterations)
    assert counts["cold"] == fresh_count >= 5
    assert all(spectra.MIN_WARM_ITERS <= counts[k] <= 4 and counts[k] * 2 <= cold_counts[k] for k in warm)
    assert _max_rel_error(result, _exact_top({**warm, **fresh})) < 0.01


def test_rms_many_equals_the_rms_of_each_tensor_by_hand():
    g = torch.Generator().manual_seed(3)
    tensors = [torch.randn(7, 5, generator=g) * 1e3, torch.randn(300, generator=g, dtype=torch.float64),
               torch.randn(4, 3, 2, generator=g).to(torch.bfloat16), torch.zeros(3, 3), torch.empty(0, 4),
               torch.full((2, 2), math.inf)]
    many = spectra.rms_many(tensors)
    for value, t in zip(many[:4], tensors[:4], strict=True):
        by_hand = float(t.double().pow(2).mean().sqrt())
        assert value == pytest.approx(by_hand, rel=1e-13, abs=0) and rms(t) == value
    assert math.isnan(many[4]) and math.isnan(rms(tensors[4]))  # empty: NaN
    assert many[5] == math.inf == rms(tensors[5])
    assert spectra.rms_many([]) == []


def test_a_matrix_whose_gram_overflows_gives_nan_without_failing_its_batch():
    g = torch.Generator().manual_seed(5)
    fine = [torch.randn(64, 32, generator=g) for _ in range(2)]
    huge = torch.full((64, 32), 1e25)  # finite entries, but A^T A overflows float32: the eigensolver fails
    sigma = top_singular_values({"a": fine[0], "huge": huge, "b": fine[1]}, warm_start=False)
    assert math.isnan(sigma["huge"])
    for name, w in (("a", fine[0]), ("b", fine[1])):
        assert sigma[name] == pytest.approx(float(torch.linalg.svdvals(w)[0]), rel=1e-3)
