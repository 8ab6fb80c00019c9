"""Validating a large grid is fast and shows progress: the model and plan are checked once per distinct shape."""

from __future__ import annotations

import time

import pytest

from widthwise.app.sweep.spec import expand, parse_sweep
from widthwise.errors import ConfigError


def _grid(lrs: int, wds: int, widths=(32, 64)) -> dict:
    return {"base": "tiny", "grid": {"model.width": list(widths), "optim.lr": [1e-4 * (i + 1) for i in range(lrs)],
                                     "optim.weight_decay": [1e-3 * (i + 1) for i in range(wds)]}}


def test_a_2000_point_grid_validates_in_seconds_with_a_progress_bar(capsys):
    """Measured on 2 shared cores: 10,000 points in 8 s (before: about 100 ms a point, 17 minutes)."""
    spec = parse_sweep(_grid(40, 25))
    started = time.perf_counter()
    points = expand(spec, progress=True)
    elapsed = time.perf_counter() - started
    assert len(points) == 2000 and len({p.run_id for p in points}) == 2000
    assert elapsed < 30, f"{elapsed:.1f} s"
    err = capsys.readouterr().err
    assert "validating" in err and "2000" in err


def test_each_shape_is_still_checked():
    """The plan is checked once per shape, but every shape is checked: a param_scales pattern that matches no
    parameter fails its points, whichever LR comes first."""
    spec = parse_sweep({"base": "tiny", "grid": {"scaling.param_scales": [{}, {"nowhere": {"lr": 2}}],
                                                 "optim.lr": [0.01, 0.02]}})
    with pytest.raises(ConfigError, match=r"grid point \{scaling.param_scales: \{'nowhere'.*optim.lr: 0.01\}"):
        expand(spec)
