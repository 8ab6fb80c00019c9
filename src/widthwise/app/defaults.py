"""Defaults of the application's commands, as plain values, and where its caches live: the command line's
``--help`` shows them without importing torch (:mod:`widthwise.app.coord_check` and :mod:`widthwise.app.calibrate`
use them)."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$WIDTHWISE_CACHE`` or ``~/.cache/widthwise``: tokenizers, token memmaps (keyed by corpus hash) and this
    machine's measured numerics."""
    env = os.environ.get("WIDTHWISE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "widthwise"


#: ``widthwise coord-check``: the built-in config of the check and its learning rate (the base width's value).
#: Measured at widths 64..512, 5 steps, seeds 0-2: ``sp`` grows with slope 1.3-2.7 in the block outputs and 0.5-0.7
#: in the logits, ``mup`` and ``robust`` stay within +-0.16 (at lr 1e-2 ``sp`` turns unstable at width 512 and its
#: logit slope gets noisy).
COORD_CHECK_CONFIG = "tiny"
COORD_CHECK_LR = 3e-3
COORD_CHECK_WIDTHS = (64, 128, 256, 512)
COORD_CHECK_RECIPES = ("sp", "mup", "robust")
COORD_CHECK_STEPS = 5

#: ``widthwise calibrate``: the built-in config (made calibratable), its widths and steps per run.
CALIBRATE_CONFIG = "tiny"
CALIBRATE_WIDTHS = (32, 64, 128)
CALIBRATE_STEPS = 500
#: The (LR, WD) premise design at the smallest width: base LR and WD each times these factors (2x2 with (1, 2)).
CALIBRATE_PREMISE_FACTORS = (1.0, 2.0)
#: Which matrix ``calibrate`` fits: the stored ``V`` (what the noise/WD equilibrium pins) or the effective weight.
CALIBRATE_WEIGHTS = ("stored", "effective")
CALIBRATE_PREMISES = ("measured", "assumed")
