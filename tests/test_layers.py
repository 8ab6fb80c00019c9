"""The layers: `import widthwise` loads the core only, imports have no circles, no private names cross modules.

The one-way contracts between layers (cli > app > diagnostics | optim > core; models import nothing of widthwise)
are import-linter's, in pyproject.toml; `make test` runs `lint-imports`.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import grimp

import widthwise

SRC = Path(widthwise.__file__).parent
#: What the application needs and the library must not load (torch itself imports tqdm, so tqdm is not checked).
HEAVY = ("matplotlib", "tokenizers", "tensorboard", "transformers", "ray", "safetensors")


def test_import_widthwise_loads_the_core_only():
    """Every public name resolved (the package loads them lazily), and still no application or heavy package."""
    code = ("import json, sys, widthwise; [getattr(widthwise, n) for n in widthwise.__all__]; "
            "print(json.dumps(sorted(sys.modules)))")
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


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def test_no_module_imports_a_private_name_of_another():
    crossings = []
    for path in sorted(SRC.rglob("*.py")):
        module = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                source = _resolve(module, path.name == "__init__.py", node)
                if source.startswith("widthwise") and source != module:
                    crossings += [f"{module} imports {source}.{a.name}" for a in node.names
                                  if a.name.startswith("_") and not a.name.startswith("__")]
    assert crossings == []
