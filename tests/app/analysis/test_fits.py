"""The one least-squares line behind calibration's power laws, the coordinate check's slopes and analyze's drift."""

import math

import pytest

from widthwise.app.analysis.fits import fit_line


def test_hand_computed_line():
    fit = fit_line([0, 1, 2, 3], [0, 1, 1, 3])  # sxx 5, sxy 4.5, ss_res 0.70, ss_tot 4.75
    assert (fit.slope, fit.intercept) == pytest.approx((0.9, -0.1))
    assert fit.r2 == pytest.approx(1 - 0.70 / 4.75)
    assert fit.residual_std == pytest.approx(math.sqrt(0.35))
    assert fit.slope_se == pytest.approx(math.sqrt(0.35) / math.sqrt(5)) and fit.n == 4


def test_an_exact_power_law_and_two_points():
    widths = [32, 64, 128, 256]
    fit = fit_line([math.log(w) for w in widths], [math.log(3 * w**0.75) for w in widths])
    assert fit.slope == pytest.approx(0.75) and math.exp(fit.intercept) == pytest.approx(3)
    two = fit_line([1, 2], [5, 3])
    assert (two.slope, two.residual_std, two.slope_se, two.r2) == pytest.approx((-2, 0, 0, 1))


def test_refuses_what_has_no_line():
    with pytest.raises(ValueError, match="two distinct x"):
        fit_line([1, 1, 1], [1, 2, 3])
    with pytest.raises(ValueError, match="3 x values but 2"):
        fit_line([1, 2, 3], [1, 2])
