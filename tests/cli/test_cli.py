"""The command line itself: ``--version``, ``config show``, and a ``--help`` that imports no torch and is fast."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

import pytest
import yaml

import widthwise
from widthwise.app.config import config_fields, load_config
from widthwise.cli import COMMANDS, main


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"widthwise {widthwise.__version__}\n"


# -- config show ---------------------------------------------------------------------------------------------
def test_config_show_gives_every_field_its_value_default_and_help(capsys):
    assert main(["config", "show", "tiny", "--set", "optim.lr=0.02"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    fields = config_fields()
    assert len([line for line in lines if line.startswith("  ")]) == len(fields)
    for key, f in fields:
        section, _, name = key.partition(".")
        assert f"{section}:" in lines
        line = next(line for line in lines if line.startswith(f"  {name}: ") and f.metadata["help"] in line)
        assert " # default " in line and line.endswith(f" — {f.metadata['help']}"), line
    assert "  lr: 0.02  # default 0.003 — base learning rate at the base width" in lines
    assert "  width: 32  # default 128 — model width d (hidden size)" in lines  # tiny's width, the default's


def test_config_show_output_loads_back_as_the_same_config(capsys, tmp_path):
    assert main(["config", "show", "demo", "--set", "optim.betas=[0.8, 0.9]", "--set", "data.path=my text"]) == 0
    path = tmp_path / "shown.yaml"
    path.write_text(capsys.readouterr().out)
    expected = load_config("demo", ["optim.betas=[0.8, 0.9]", "data.path=my text"])
    assert load_config(path) == expected
    assert yaml.safe_load(path.read_text()) == expected.to_dict()


def test_config_show_reads_a_yaml_file_and_defaults(capsys, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {width: 256, heads: 8}\n")
    assert main(["config", "show", str(path)]) == 0
    assert "  width: 256  # default 128 — model width d (hidden size)" in capsys.readouterr().out.splitlines()
    assert main(["config", "show"]) == 0
    assert "  width: 128  # default 128 — model width d (hidden size)" in capsys.readouterr().out.splitlines()


@pytest.mark.parametrize(("args", "needle"), [
    (["nope"], "unknown config 'nope'"),
    (["tiny", "--set", "optim.lr=-1"], "optim.lr: must be positive"),
    (["tiny", "--set", "model.colour=red"], "unknown key model.colour"),
    (["tiny", "--set", "optim.lr"], "expected section.key=value"),
])
def test_config_show_bad_input_is_one_line_and_exit_2(capsys, args, needle):
    assert main(["config", "show", *args]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("widthwise: error: ") and needle in lines[0], captured.err
    assert captured.out == ""



class _Writes:
    """A stderr that records each write call."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_the_error_line_is_one_write_so_ranks_sharing_stderr_do_not_run_lines_together(monkeypatch):
    """torchrun's ranks write to one stderr: a line written in two parts (print's text, then its newline) can end
    up as two ranks' messages on one line."""
    stderr = _Writes()
    monkeypatch.setattr(sys, "stderr", stderr)
    assert main(["config", "show", "nope"]) == 2
    assert len(stderr.calls) == 1 and stderr.calls[0].startswith("widthwise: error: ")
    assert stderr.calls[0].endswith("\n") and stderr.calls[0].count("\n") == 1

def test_config_without_an_action_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["config"])
    assert exc.value.code == 2 and "ACTION" in capsys.readouterr().err


# -- a fast --help -------------------------------------------------------------------------------------------
_PROBE = """
import json, sys
from widthwise.cli import build_parser, main
build_parser()
after_build = sorted(m for m in ("torch", "numpy", "matplotlib") if m in sys.modules)
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"after_build": after_build, "code": code,
                  "after_help": sorted(m for m in ("torch", "numpy", "matplotlib") if m in sys.modules)}))
"""


@pytest.mark.parametrize("argv", [["--help"], *([c.replace("_", "-"), "--help"] for c in COMMANDS),
                                  ["config", "show", "--help"]])
def test_help_imports_no_torch(argv):
    proc = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"after_build": [], "code": 0, "after_help": []}, result


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["coord-check", "--help"], ["--version"]])
def test_help_returns_in_under_a_second(argv):
    def once() -> float:
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "widthwise", *argv], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and proc.stdout, proc.stderr
        return time.perf_counter() - started

    walls = [once() for _ in range(3)]
    assert statistics.median(walls) < 1.0, walls  # measured ~0.1 s; importing torch alone takes ~2 s


def test_help_lists_every_command_and_the_builtin_configs(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert command.replace("_", "-") in out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "built-in configs: demo, tiny" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("argv", [["calibrate", "--out", "OUT", "--widths", "0,32,64"],
                                  ["coord-check", "--out", "OUT", "--widths", "64,-128"],
                                  ["bench", "--out", "OUT.json", "--widths", ","]])
def test_width_lists_must_be_positive_integers(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and "--widths: expected comma-separated positive integers" in err[-1]
    assert list(tmp_path.iterdir()) == []
