"""One error module: every error widthwise defines is a WidthwiseError there, every exit code is defined there."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import widthwise
from widthwise import errors
from widthwise.cli import main

SRC = Path(widthwise.__file__).parent


def _definitions():
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            yield path.relative_to(SRC).as_posix(), node


def test_errors_and_exit_codes_are_defined_only_in_the_errors_module():
    misplaced = []
    for where, node in _definitions():
        if where == "errors.py":
            continue
        if isinstance(node, ast.ClassDef) and any(
            isinstance(b, ast.Name) and (b.id.endswith(("Error", "Exception"))) for b in node.bases
        ):
            misplaced.append(f"{where}: class {node.name}")
        targets = node.targets if isinstance(node, ast.Assign) else []
        targets += [node.target] if isinstance(node, ast.AnnAssign) else []
        for t in targets:
            names = [e.id for e in t.elts] if isinstance(t, ast.Tuple) else [getattr(t, "id", "")]
            misplaced += [f"{where}: {n}" for n in names if n.startswith("EXIT_")]
    assert misplaced == []


def test_every_error_is_a_widthwise_error_and_a_value_error():
    classes = [getattr(errors, n) for n in errors.__all__ if n.endswith("Error")]
    assert len(classes) >= 6
    for cls in classes:
        assert issubclass(cls, errors.WidthwiseError) and issubclass(cls, ValueError)
    codes = {n: getattr(errors, n) for n in errors.__all__ if n.startswith("EXIT_")}
    assert codes["EXIT_OK"] == 0 and codes["EXIT_BAD_INPUT"] == 2 and codes["EXIT_DIVERGED"] == 3
    assert len(set(codes.values())) == len(codes)


@pytest.mark.parametrize("argv", [["train", "no-such-config", "--out", "x"], ["diagnose", "/no/such/run"],
                                  ["analyze", "/no/such/sweep"]])
def test_the_cli_turns_any_widthwise_error_into_one_line_and_exit_2(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == errors.EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err.startswith("widthwise: error: ") and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()
