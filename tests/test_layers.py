"""The layers: `import widthwise` loads the core only, imports have no circles, no private names cross modules.

The one-way contracts between layers (cli > app > diagnostics | optim > core; models import nothing of widthwise)
are import-linter's, in pyproject.toml; `make test` runs `lint-imports`.
"""

from __future__ import annotations

import json
import subprocess
import sys

import grimp

#: What the application needs and the library must not load (torch itself imports tqdm, so tqdm is not checked).
HEAVY = ("matplotlib", "tokenizers", "tensorboard", "transformers", "ray", "safetensors")


def test_import_widthwise_loads_the_core_only():
    code = "import json, sys, widthwise; print(json.dumps(sorted(sys.modules)))"
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                       text=True).stdout)
    ours = [m for m in loaded if m.split(".")[:2] in (["widthwise", "app"], ["widthwise", "cli"])]
    heavy = [m for m in loaded if m.split(".")[0] in HEAVY]
    assert ours == [] and heavy == []
    assert "widthwise.planning" in loaded and "widthwise.optim.build" in loaded


def test_no_import_circles():
    graph = grimp.build_graph("widthwise")
    circles = sorted({tuple(sorted((a, b))) for a in graph.modules for b in graph.find_modules_directly_imported_by(a)
                      if graph.chain_exists(importer=b, imported=a)})
    assert circles == []
