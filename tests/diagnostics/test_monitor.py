"""TrainingDiagnostics: one record per call, drift warnings once, TensorBoard scalars pooled by layer type."""

from __future__ import annotations

import pytest
import torch

from widthwise.app.config import load_config
from widthwise.app.setup import build
from widthwise.diagnostics.monitor import TrainingDiagnostics


def _built():
    return build(load_config("tiny"), 300, torch.device("cpu"))


def test_record_holds_every_matrix_and_the_optimizers_real_lr_wd():
    built = _built()
    batch = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    record, scalars, warnings = TrainingDiagnostics(built.model, built.optimizer, batch).measure(7)
    assert record["step"] == 7 and warnings == [] and record["warnings"] == []
    q = record["matrices"]["blocks.0.attn.q_proj.weight"]
    group = next(g for g in built.optimizer.param_groups if "blocks.0.attn.q_proj.weight" in g["names"])
    assert (q["lr"], q["weight_decay"]) == (group["lr"], group["weight_decay"])
    assert q["sigma_max"] > 0 and q["sublayer_gain"] > 0 and q["equilibrium_ratio"] > 0
    # at init the multipliers are 1, yet the record already has the keys of a model with multipliers
    assert q["sigma_max_stored"] == q["sigma_max"] and q["rms_effective"] == q["rms"]
    assert "sigma_max_stored" not in record["matrices"]["head.weight"]  # the head has none
    assert set(record["blocks"]) == {"blocks.0.attn", "blocks.0.mlp", "blocks.1.attn", "blocks.1.mlp"}
    mean_q = (q["sigma_max"] + record["matrices"]["blocks.1.attn.q_proj.weight"]["sigma_max"]) / 2
    assert abs(scalars["sigma_max"]["attn.q_proj"] - mean_q) < 1e-9
    assert "qk.blocks.0.attn" in scalars["symmetry"]


def test_without_batch_or_optimizer_the_rest_is_still_measured():
    built = _built()
    record, _, _ = TrainingDiagnostics(built.model, spectra=False).measure(0)
    q = record["matrices"]["blocks.0.attn.q_proj.weight"]
    assert "sigma_max" not in q and "sublayer_gain" not in q and "lr" not in q and q["rms"] > 0
    assert "blocks" not in record and record["multipliers"]


def test_a_drift_warning_is_reported_once_then_stays_in_the_records():
    built = _built()
    monitor = TrainingDiagnostics(built.model, built.optimizer, drift_threshold=3.0)
    attn = built.model.blocks[0].attn
    with torch.no_grad():
        attn.q_proj.parametrizations.weight[0].row.mul_(8.0)
        attn.k_proj.parametrizations.weight[0].row.div_(8.0)
    record, _, new = monitor.measure(10)
    assert len(new) == 1 and "qk.blocks.0.attn" in new[0] and record["warnings"] == new
    record, _, new = monitor.measure(20)
    assert new == [] and len(record["warnings"]) == 1


def test_the_stored_v_sigma_is_logged_where_multipliers_make_it_differ_and_only_there_measured():
    from widthwise.diagnostics import spectra

    built = _built()
    monitor = TrainingDiagnostics(built.model, built.optimizer)
    attn = built.model.blocks[0].attn
    with torch.no_grad():
        attn.q_proj.parametrizations.weight[0].row.mul_(3.0)
    record, _, _ = monitor.measure(5)
    q = record["matrices"]["blocks.0.attn.q_proj.weight"]
    exact = float(torch.linalg.matrix_norm(attn.q_proj.parametrizations.weight.original.detach(), ord=2))
    assert q["sigma_max_stored"] == pytest.approx(exact, rel=1e-3)
    assert q["sigma_max"] == pytest.approx(3 * exact, rel=1e-3)  # every row times 3
    # the stored pass iterates only the matrices with multipliers (the head's stored V is its sigma_max)
    assert set(spectra.last_iterations) == set(monitor.parametrized)
    assert "head.weight" not in monitor.parametrized and "sigma_max_stored" not in record["matrices"]["head.weight"]


def test_a_measurement_classifies_nothing_and_builds_each_effective_weight_once(monkeypatch):
    """The structure is found when the monitor is made; a measurement evaluates each parametrized weight once
    (shared by its RMS, sigma_max, the qk drift and the gains' forward pass), and records what the standalone
    functions give."""
    from torch.nn.utils import parametrize

    import widthwise.diagnostics as diagnostics

    built = _built()
    with torch.no_grad():  # multipliers away from 1, so effective and stored weights differ
        for name, p in built.model.named_parameters():
            if p.ndim == 1:
                p.mul_(1.0 + 0.1 * torch.rand(p.shape, generator=torch.Generator().manual_seed(len(name))))
    batch = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    monitor = TrainingDiagnostics(built.model, built.optimizer, batch)
    calls = []
    original = parametrize.ParametrizationList.forward
    monkeypatch.setattr(parametrize.ParametrizationList, "forward",
                        lambda self: calls.append(1) or original(self))
    with torch.no_grad():
        built.model(batch)
    per_forward, calls[:] = len(calls), []

    def refused(*args, **kwargs):
        raise AssertionError("classified during a measurement")

    for module in (diagnostics.gains, diagnostics.matrices, diagnostics.multiplier_stats, diagnostics.monitor):
        for name in ("classify", "parameter_sites", "matrix_sites"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, refused)
    record, _, _ = monitor.measure(3)
    assert per_forward and len(calls) == len(monitor.parametrized) and monitor.parametrized
    monkeypatch.undo()
    assert record["symmetry"] == diagnostics.symmetry_drift(built.model)
    assert record["multipliers"] == diagnostics.multiplier_stats(built.model)
    gains = diagnostics.sublayer_gains(built.model, batch)
    assert record["gains"] == diagnostics.gain_summary(gains)
    sigmas = diagnostics.top_singular_values(built.model, which="stored", warm_start=False)
    for name in monitor.parametrized:
        entry = record["matrices"][name]
        assert entry["sigma_max_stored"] == pytest.approx(sigmas[name], rel=1e-3)
        assert entry["sigma_max"] != pytest.approx(entry["sigma_max_stored"], rel=1e-3)



def test_gains_after_the_first_measurement_stop_at_the_head_with_the_same_values():
    from widthwise.diagnostics.gains import gain_summary, sublayer_gains

    built = _built()
    batch = torch.randint(0, 300, (4, 16), generator=torch.Generator().manual_seed(0))
    monitor = TrainingDiagnostics(built.model, built.optimizer, batch)
    assert monitor.gains_stop_at == ""
    first, _, _ = monitor.measure(1)
    assert monitor.gains_stop_at == "head"  # found called last, once, an nn.Linear
    calls = []
    handle = built.model.head.register_forward_hook(lambda *args: calls.append(1))
    try:
        second, _, _ = monitor.measure(2)
    finally:
        handle.remove()
    assert not calls  # the second measurement stopped before the head's matmul
    assert second["gains"] == pytest.approx(first["gains"], rel=1e-5)  # nothing trained in between
    assert second["gains"] == pytest.approx(gain_summary(sublayer_gains(built.model, batch)), rel=1e-5)
    head = second["matrices"]["head.weight"]["sublayer_gain"]
    assert head == pytest.approx(first["matrices"]["head.weight"]["sublayer_gain"], rel=1e-5)
