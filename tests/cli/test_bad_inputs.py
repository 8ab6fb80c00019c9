"""The bad-input catalogue: every case is exit code 2, exactly one line on stderr naming what is wrong, no
traceback, and no file of the user's changed (hashed before and after). Each case runs in process.

A case is ``(id, files, argv, needle)``: ``files`` maps names under the test's folder to their contents (text,
bytes, :data:`FIFO`, :data:`DIR`, or a function that writes the file), ``{tmp}`` in ``argv`` is that folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from widthwise.cli import main

FIFO, DIR = object(), object()
#: 9 levels of 9 aliases each: 9**9 (387 million) values once expanded; PyYAML builds it in microseconds.
_BOMB = "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True))
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + _BOMB
DEEP = "[" * 5000 + "]" * 5000
FLOW_BOMB = "[&a [1,1,1,1,1,1,1,1,1], " + ", ".join(
    f"&{c} [{', '.join([f'*{p}'] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi", strict=True)) + "]"
TINY = ("--set", "train.steps=5", "--set", "schedule.warmup=1", "--set", "train.progress=false")
RECIPE = ("train", "tiny", "--out", "{tmp}/run", *TINY, "--set")
SWEEP_OK = "base: tiny\ngrid: {optim.lr: [0.01, 0.02]}\nset: {train.steps: 5, schedule.warmup: 1}\n"


def _sqlite(*statements: str) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        conn = sqlite3.connect(path)
        for s in statements:
            conn.execute(s)
        conn.commit()
        conn.close()
    return write


_RUNS = ("CREATE TABLE runs (run_id TEXT PRIMARY KEY, name TEXT, params TEXT, config TEXT, status TEXT, val_loss REAL, "
         "final_train_loss REAL, tokens INTEGER, steps INTEGER, wall_s REAL, tokens_per_s REAL, width INTEGER, "
         "base_width INTEGER, recipe TEXT, optimizer TEXT, multipliers TEXT, lr REAL, weight_decay REAL, seed INTEGER, "
         "sigma_max REAL, gain REAL, layer_types TEXT, error TEXT, attempts INTEGER NOT NULL DEFAULT 0, worker TEXT, "
         "started_at REAL, finished_at REAL)")


def _row(**values: object) -> str:
    row = {"run_id": "'a'", "name": "'a'", "params": "'{}'", "config": "'{}'", "status": "'completed'",
           "val_loss": "5.0", **{k: str(v) for k, v in values.items()}}
    return f"INSERT INTO runs ({', '.join(row)}) VALUES ({', '.join(row.values())})"


def _trained(edit: Callable[[Path], None]) -> Callable[[Path], None]:
    """A copy of the module's trained run at the path, then ``edit(path)``."""
    def write(path: Path) -> None:
        shutil.copytree(_TRAINED[0], path)
        edit(path)
    return write


def _write(name: str, content: bytes) -> Callable[[Path], None]:
    return lambda run: (run / name).write_bytes(content)


def _state(**changes: object) -> Callable[[Path], None]:
    """Resume-ready (no summary.json) with the step-5 checkpoint's state.json changed: a ``None`` drops the field."""
    def edit(run: Path) -> None:
        (run / "summary.json").unlink()
        path = run / "checkpoints" / "step_00000005" / "state.json"
        state = json.loads(path.read_text())
        for key, value in changes.items():
            if value is None:
                state.pop(key)
            else:
                state[key] = value
        path.write_text(json.dumps(state))
    return edit


def _optimizer_pt(part: str, drop: str) -> Callable[[Path], None]:
    """Resume-ready with ``drop`` removed from the ``part`` of the step-5 checkpoint's optimizer.pt."""
    def edit(run: Path) -> None:
        import torch

        (run / "summary.json").unlink()
        path = run / "checkpoints" / "step_00000005" / "optimizer.pt"
        rest = torch.load(path, weights_only=True)
        rest[part].pop(drop)
        torch.save(rest, path)
    return edit


def _run_config(text: str) -> dict[str, object]:
    """A run directory whose config.yaml is ``text``."""
    return {"run": DIR, "run/config.yaml": text, "run/checkpoints": DIR}


CASES = [
    # -- config files -------------------------------------------------------------------------------------------
    ("config-directory", {"c.yaml": DIR}, ["config", "show", "{tmp}/c.yaml"], "is a directory, not a file"),
    ("config-fifo", {"c.yaml": FIFO}, ["config", "show", "{tmp}/c.yaml"], "not a regular file"),
    ("config-fifo-train", {"c.yaml": FIFO}, ["train", "{tmp}/c.yaml", "--out", "{tmp}/r"], "not a regular file"),
    ("config-missing", {}, ["train", "{tmp}/c.yaml", "--out", "{tmp}/r"], "does not exist"),
    ("config-not-utf8", {"c.yaml": b"model: {width: 64}\n\xff\n"}, ["config", "show", "{tmp}/c.yaml"], "not UTF-8"),
    ("config-not-yaml", {"c.yaml": "model: {width: [\n"}, ["config", "show", "{tmp}/c.yaml"], "not valid YAML"),
    ("config-a-list", {"c.yaml": "- 1\n- 2\n"}, ["config", "show", "{tmp}/c.yaml"], "expected a mapping"),
    ("config-alias-bomb", {"c.yaml": "model:\n  family: hf\n  hf_config:\n    class: LlamaConfig\n" +
                           "".join(f"    {line}\n" for line in BOMB.splitlines())},
     ["train", "{tmp}/c.yaml", "--out", "{tmp}/r", "--set", "optim.lr=0.01"], "aliases expand to more than"),
    ("config-recursive-alias", {"c.yaml": "model: {hf_config: &a {x: *a}}\n"}, ["config", "show", "{tmp}/c.yaml"],
     "recursive alias"),
    ("config-deep", {"c.yaml": f"model: {{hf_config: {{x: {DEEP}}}}}\n"}, ["config", "show", "{tmp}/c.yaml"],
     "nested deeper than 64"),
    ("config-huge", {"c.yaml": "#" * (5 * 2**20)}, ["config", "show", "{tmp}/c.yaml"], "larger than the"),
    ("config-unknown-section", {"c.yaml": "modle: {width: 64}\n"}, ["config", "show", "{tmp}/c.yaml"],
     "unknown config section 'modle'"),
    ("config-unknown-key", {"c.yaml": "model: {colour: red}\n"}, ["config", "show", "{tmp}/c.yaml"],
     "unknown key model.colour"),
    ("config-wrong-type", {"c.yaml": "model: {width: wide}\n"}, ["config", "show", "{tmp}/c.yaml"],
     "model.width: expected an integer"),
    ("config-unknown-builtin", {}, ["config", "show", "tinyy"], "unknown config 'tinyy'"),
    # -- --set values -----------------------------------------------------------------------------------------
    ("set-alias-bomb", {}, ["config", "show", "tiny", "--set", f"scaling.overrides={{x: {FLOW_BOMB}}}"],
     "aliases expand to more than"),
    ("set-deep", {}, ["train", "tiny", "--out", "{tmp}/r", "--set", f"scaling.param_scales={DEEP}"],
     "nested deeper than 64"),
    ("set-no-equals", {}, ["config", "show", "tiny", "--set", "optim.lr"], "expected section.key=value"),
    ("set-unknown-key", {}, ["config", "show", "tiny", "--set", "optim.rate=1"], "unknown key optim.rate"),
    ("set-device-cuda-abc", {}, ["train", "tiny", "--out", "{tmp}/r", "--set", "train.device=cuda:abc"],
     "train.device: unknown device"),
    ("set-lr-infinite", {}, ["train", "tiny", "--out", "{tmp}/r", "--set", "optim.lr=.inf"],
     "optim.lr: must be positive"),
    ("set-width-zero", {}, ["train", "tiny", "--out", "{tmp}/r", "--set", "model.width=0"], "model.width"),
    ("set-warmup-past-steps", {}, ["train", "tiny", "--out", "{tmp}/r", "--set", "train.steps=2"],
     "schedule.warmup"),
    ("set-width-too-big-for-memory", {}, ["train", "tiny", "--out", "{tmp}/r", *TINY, "--set", "model.width=65536",
                                          "--set", "model.heads=1", "--set", "model.kv_heads=1"], "GiB to train"),
    ("set-width-overflows", {}, ["train", "tiny", "--out", "{tmp}/r", *TINY, "--set", f"model.width={2**40}",
                                 "--set", "model.heads=1", "--set", "model.kv_heads=1"], "sizes overflow"),
    # -- recipe files -----------------------------------------------------------------------------------------
    ("recipe-not-utf8", {"r.yaml": b"recipe: {name: x\xff}\n"}, [*RECIPE, "scaling.recipe={tmp}/r.yaml"],
     "not UTF-8"),
    ("recipe-directory", {"r.yaml": DIR}, [*RECIPE, "scaling.recipe={tmp}/r.yaml"], "is a directory"),
    ("recipe-fifo", {"r.yaml": FIFO}, [*RECIPE, "scaling.recipe={tmp}/r.yaml"], "not a regular file"),
    ("recipe-missing", {}, [*RECIPE, "scaling.recipe={tmp}/r.yaml"], "does not exist"),
    ("recipe-not-yaml", {"r.yaml": "recipe: {name: [\n"}, [*RECIPE, "scaling.recipe={tmp}/r.yaml"],
     "not valid YAML"),
    ("recipe-json-broken", {"r.json": '{"name": "x",,}'}, [*RECIPE, "scaling.recipe={tmp}/r.json"],
     "r.json: not valid YAML"),
    ("recipe-alias-bomb", {"r.yaml": BOMB}, [*RECIPE, "scaling.recipe={tmp}/r.yaml"], "aliases expand"),
    ("recipe-unknown-field", {"r.yaml": "name: x\nlr_exponent: 1.0\ncolour: red\n"},
     [*RECIPE, "scaling.recipe={tmp}/r.yaml"], "unknown field 'colour'"),
    # -- sweep files ------------------------------------------------------------------------------------------
    ("sweep-missing", {}, ["sweep", "{tmp}/s.yaml", "--out", "{tmp}/o"], "no such sweep file"),
    ("sweep-directory", {"s.yaml": DIR}, ["sweep", "{tmp}/s.yaml", "--out", "{tmp}/o"], "is a directory"),
    ("sweep-fifo", {"s.yaml": FIFO}, ["sweep", "{tmp}/s.yaml", "--out", "{tmp}/o"], "not a regular file"),
    ("sweep-not-utf8", {"s.yaml": b"base: tiny\xff\n"}, ["sweep", "{tmp}/s.yaml", "--out", "{tmp}/o"], "not UTF-8"),
    ("sweep-not-yaml", {"s.yaml": "grid: {\n"}, ["sweep", "{tmp}/s.yaml", "--out", "{tmp}/o"], "not valid YAML"),
    ("sweep-alias-bomb", {"s.yaml": "base: tiny\n" + BOMB + "grid: {model.hf_config: [*i]}\n"},
     ["sweep", "{tmp}/s.yaml", "--out", "{tmp}/o"], "aliases expand"),
    ("sweep-unknown-key", {"s.yaml": SWEEP_OK + "colour: red\n"}, ["sweep", "{tmp}/s.yaml", "--out", "{tmp}/o"],
     "unknown key 'colour'"),
    ("sweep-no-grid", {"s.yaml": "base: tiny\n"}, ["sweep", "{tmp}/s.yaml", "--out", "{tmp}/o"], "grid: expected"),
    ("sweep-grid-not-list", {"s.yaml": "base: tiny\ngrid: {optim.lr: 0.01}\n"},
     ["sweep", "{tmp}/s.yaml", "--out", "{tmp}/o"], "expected a non-empty list"),
    ("sweep-equal-numbers", {"s.yaml": "base: tiny\ngrid: {optim.lr: [0.01, 1e-2]}\n"},
     ["sweep", "{tmp}/s.yaml", "--out", "{tmp}/o"], "are the same run"),
    ("sweep-runtime-only-key", {"s.yaml": "base: tiny\ngrid: {optim.lr: [0.01], train.threads: [1, 2]}\n"},
     ["sweep", "{tmp}/s.yaml", "--out", "{tmp}/o"], "are the same run"),
    ("sweep-bad-base", {"s.yaml": "base: nowhere.yaml\ngrid: {optim.lr: [0.01]}\n"},
     ["sweep", "{tmp}/s.yaml", "--out", "{tmp}/o"], "base: nowhere.yaml"),
    ("sweep-bad-seeds", {"s.yaml": SWEEP_OK + "seeds: [1, 1]\n"}, ["sweep", "{tmp}/s.yaml", "--out", "{tmp}/o"],
     "seeds"),
    ("sweep-grid-and-set", {"s.yaml": SWEEP_OK.replace("train.steps: 5", "optim.lr: 0.1")},
     ["sweep", "{tmp}/s.yaml", "--out", "{tmp}/o"], "both in grid and set"),
    ("sweep-bad-point", {"s.yaml": "base: tiny\ngrid: {model.heads: [3]}\n"},
     ["sweep", "{tmp}/s.yaml", "--out", "{tmp}/o"], "grid point {model.heads: 3}"),
    ("sweep-out-is-a-file", {"s.yaml": SWEEP_OK, "o": "mine\n"}, ["sweep", "{tmp}/s.yaml", "--out", "{tmp}/o"],
     "not a sweep directory"),
    # -- sweep flags --------------------------------------------------------------------------------------------
    ("ray-address-unreachable", {"s.yaml": SWEEP_OK},
     ["sweep", "{tmp}/s.yaml", "--out", "{tmp}/o", "--executor", "ray", "--address", "127.0.0.1:1"],
     "cannot reach a Ray cluster"),
    ("ray-address-malformed", {"s.yaml": SWEEP_OK},
     ["sweep", "{tmp}/s.yaml", "--out", "{tmp}/o", "--executor", "ray", "--address", "somewhere"],
     "expected HOST:PORT"),
    ("address-without-ray", {"s.yaml": SWEEP_OK}, ["sweep", "{tmp}/s.yaml", "--out", "{tmp}/o", "--address", "h:1"],
     "--executor ray only"),
    ("sweep-workers-zero", {"s.yaml": SWEEP_OK}, ["sweep", "{tmp}/s.yaml", "--out", "{tmp}/o", "--workers", "0"],
     "expected a positive integer"),
    # -- results databases ------------------------------------------------------------------------------------
    ("db-garbage-rerun", {"s.yaml": SWEEP_OK, "o": DIR, "o/results.db": os.urandom(4096)},
     ["sweep", "{tmp}/s.yaml", "--out", "{tmp}/o"], "is unreadable, not an SQLite database"),
    ("db-foreign-schema-rerun", {"s.yaml": SWEEP_OK, "o": DIR, "o/results.db": _sqlite("CREATE TABLE runs (x)")},
     ["sweep", "{tmp}/s.yaml", "--out", "{tmp}/o"], "table runs lacks column run_id"),
    ("db-garbage", {"o": DIR, "o/results.db": os.urandom(4096)}, ["analyze", "{tmp}/o"], "results.db"),
    ("db-foreign-schema", {"o": DIR, "o/results.db": _sqlite("CREATE TABLE runs (x)")}, ["analyze", "{tmp}/o"],
     "table runs lacks column run_id"),
    ("db-other-tables", {"o": DIR, "o/results.db": _sqlite("CREATE TABLE songs (x)")}, ["analyze", "{tmp}/o"],
     "no table runs"),
    ("db-params-not-json", {"o": DIR, "o/results.db": _sqlite(_RUNS, _row(params="'{not json'"))},
     ["analyze", "{tmp}/o"], "column params is not JSON"),
    ("db-null-name", {"o": DIR, "o/results.db": _sqlite(_RUNS, _row(name="NULL"))}, ["analyze", "{tmp}/o"],
     "column name is None"),
    ("db-null-status", {"o": DIR, "o/results.db": _sqlite(_RUNS, _row(status="NULL"))}, ["analyze", "{tmp}/o"],
     "column status is None"),
    ("db-unknown-status", {"o": DIR, "o/results.db": _sqlite(_RUNS, _row(status="'great'"))},
     ["analyze", "{tmp}/o"], "status 'great'"),
    ("db-params-a-list", {"o": DIR, "o/results.db": _sqlite(_RUNS, _row(params="'[1]'"))}, ["analyze", "{tmp}/o"],
     "must be JSON objects"),
    ("db-garbage-transfer", {"o": DIR, "o/results.db": os.urandom(4096), "o/optima.json": "{not json"},
     ["transfer", "{tmp}/o", "--width", "256", "--out", "{tmp}/t.yaml"], "optima.json"),
    ("db-missing", {"o": DIR}, ["analyze", "{tmp}/o"], "no results.db"),
    ("optima-deep", {"o": DIR, "o/optima.json": "[" * 100_000 + "]" * 100_000},
     ["transfer", "{tmp}/o", "--width", "256", "--out", "{tmp}/t.yaml"], "optima.json: JSON nested too deeply"),
    ("optima-not-optima", {"o": DIR, "o/optima.json": "[]"},
     ["transfer", "{tmp}/o", "--width", "256", "--out", "{tmp}/t.yaml"], "not an optima file"),
    # -- CLI flags ---------------------------------------------------------------------------------------------
    ("flag-unknown-command", {}, ["frobnicate"], "invalid choice"),
    ("flag-calibrate-width-zero", {}, ["calibrate", "--widths", "0,32", "--out", "{tmp}/c"],
     "expected comma-separated positive integers"),
    ("flag-bench-out-exists", {"b.json": '{"mine": 1}\n'}, ["bench", "tiny", "--out", "{tmp}/b.json", "--quick"],
     "exists; pass --force"),
    ("flag-bench-plot-exists", {"b.png": b"\x89PNG mine"}, ["bench", "tiny", "--out", "{tmp}/b.json", "--quick"],
     "b.png exists; pass --force"),
    ("flag-bench-out-dir", {"b.json": DIR}, ["bench", "tiny", "--out", "{tmp}/b.json", "--no-plot", "--quick"],
     "is a directory"),
    ("flag-train-no-out", {}, ["train", "tiny"], "--out RUN_DIR is required"),
    # -- data files --------------------------------------------------------------------------------------------
    ("data-fifo", {"d.txt": FIFO}, ["train", "tiny", "--out", "{tmp}/r", *TINY, "--set", "data.path={tmp}/d.txt"],
     "not a regular file"),
    ("data-fifo-in-folder", {"d": DIR, "d/a.txt": FIFO},
     ["train", "tiny", "--out", "{tmp}/r", *TINY, "--set", "data.path={tmp}/d"], "not a regular file"),
    ("data-not-utf8", {"d.txt": b"hello \xff\xfe world\n" * 100},
     ["train", "tiny", "--out", "{tmp}/r", *TINY, "--set", "data.path={tmp}/d.txt"], "not UTF-8"),
    ("data-jsonl-broken", {"d.jsonl": '{"text": "a"}\n{oops\n'},
     ["train", "tiny", "--out", "{tmp}/r", *TINY, "--set", "data.path={tmp}/d.jsonl"], "d.jsonl:2: invalid JSON"),
    # -- run directories ---------------------------------------------------------------------------------------
    ("run-config-not-yaml", _run_config("model: {width: [\n"), ["diagnose", "{tmp}/run"], "config.yaml is corrupt"),
    ("run-config-alias-bomb", _run_config(BOMB), ["train", "--resume", "{tmp}/run"], "config.yaml is corrupt"),
    ("run-config-not-utf8", _run_config(b"model: {width: \xff}\n"), ["diagnose", "{tmp}/run"],
     "config.yaml is corrupt"),
    ("run-missing", {}, ["diagnose", "{tmp}/run"], "no such run directory"),
    ("run-not-a-run", {"run": DIR, "run/notes.txt": "mine\n"}, ["export", "{tmp}/run", "--out", "{tmp}/hf"],
     "not a widthwise run directory"),
    ("run-out-exists", {"r": DIR, "r/notes.txt": "mine\n"}, ["train", "tiny", "--out", "{tmp}/r", *TINY],
     "already exists and is not empty"),
    ("run-summary-deep", {"run": _trained(_write("summary.json", b"[" * 100_000 + b"]" * 100_000))},
     ["train", "--resume", "{tmp}/run"], "summary.json is corrupt (RecursionError)"),
    ("run-out-under-a-file", {"f": "mine\n"}, ["train", "tiny", "--out", "{tmp}/f/r", *TINY], "Not a directory"),
    ("run-latest-not-utf8", {"run": _trained(_write("checkpoints/latest", b"\xff\xfe"))}, ["diagnose", "{tmp}/run"],
     "latest: not UTF-8 text"),
    ("run-latest-elsewhere", {"run": _trained(_write("checkpoints/latest", b"../../elsewhere"))},
     ["diagnose", "{tmp}/run"], "which is not a checkpoint folder"),
    ("run-weights-truncated", {"run": _trained(_write("checkpoints/step_00000005/model.safetensors", b"\0" * 8))},
     ["export", "{tmp}/run", "--out", "{tmp}/hf"], "model.safetensors"),
    ("run-state-no-sampler", {"run": _trained(_state(sampler=None))}, ["train", "--resume", "{tmp}/run"],
     "(state.json): the field 'sampler' is missing"),
    ("run-state-no-step", {"run": _trained(_state(step=None))}, ["diagnose", "{tmp}/run"],
     "state.json: the field 'step' is missing"),
    ("run-state-tokens-text", {"run": _trained(_state(tokens="many"))}, ["train", "--resume", "{tmp}/run"],
     "the field 'tokens' is str, not int"),
    ("run-state-no-recent", {"run": _trained(_state(recent=None))}, ["train", "--resume", "{tmp}/run"],
     "(state.json): the field 'recent' is missing"),
    ("run-state-sampler-garbage", {"run": _trained(_state(sampler={"version": 1}))},
     ["train", "--resume", "{tmp}/run"], "the sampler state does not fit"),
    ("run-optimizer-no-state", {"run": _trained(_optimizer_pt("optimizer", "state"))},
     ["train", "--resume", "{tmp}/run"], "optimizer state does not fit"),
    ("run-rng-missing", {"run": _trained(_optimizer_pt("rng", "torch"))}, ["train", "--resume", "{tmp}/run"],
     "RNG state): the field 'torch' is missing"),
    # -- HF export folders -------------------------------------------------------------------------------------
    ("export-out-not-empty", {"hf": DIR, "hf/notes.txt": "mine\n", **_run_config("model: {width: 64}\n")},
     ["export", "{tmp}/run", "--out", "{tmp}/hf"], "already exists and is not empty"),
    ("eval-folder-neither", {"x": DIR, "x/notes.txt": "mine\n"}, ["eval", "{tmp}/x", "--tasks", "shakespeare_cloze"],
     "neither a widthwise run directory"),
    ("eval-hf-config-garbage", {"hf": DIR, "hf/config.json": "{not json", "hf/model.safetensors": b"\0" * 16},
     ["eval", "{tmp}/hf", "--tasks", "shakespeare_cloze"], "not a loadable transformers folder"),
    ("eval-unknown-task", {"x": DIR}, ["eval", "{tmp}/x", "--tasks", "no_such_task"],
     "unknown task 'no_such_task'"),
]


_TRAINED: list[Path] = []


@pytest.fixture(scope="module", autouse=True)
def trained_run(tmp_path_factory, data_cache):
    """One tiny 5-step run with a checkpoint, which the run-directory cases copy and damage."""
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", "tiny", "--out", str(run), *TINY, "--set", "train.checkpoint_every=5", "--set",
                 "train.plots=false", "--set", "train.tensorboard=false", "--set", "train.sample_tokens=0",
                 "--quiet"]) == 0
    _TRAINED[:] = [run]
    yield run


def _make(root: Path, files: dict[str, object]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is DIR:
            path.mkdir(exist_ok=True)
        elif content is FIFO:
            os.mkfifo(path)
        elif callable(content):
            content(path)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(str(content), encoding="utf-8")


def _hashes(root: Path) -> dict[str, str]:
    """sha256 of every regular file under ``root`` (FIFOs and folders by kind)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_fifo():
            out[str(path)] = "fifo"
        elif path.is_file():
            out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


#: Cases that import lm-eval (about 10 s): ``eval-folder-neither`` is their fast variant.
SLOW = {"eval-unknown-task"}


@pytest.mark.parametrize(("files", "argv", "needle"), [
    pytest.param(*c[1:], id=c[0], marks=[pytest.mark.slow] if c[0] in SLOW else []) for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(tmp_path, capsys, data_cache, files, argv, needle):
    _make(tmp_path, files)
    before = _hashes(tmp_path)
    try:
        code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(("widthwise: error:", "widthwise ")) and needle in lines[0], lines[0]
    after = _hashes(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing of the user's changed


def test_the_catalogue_has_at_least_60_cases():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)


def test_an_unexpected_exception_is_one_line_naming_its_traceback_file(tmp_path, capsys, monkeypatch):
    """What ``main`` prints for an exception that is not bad input: its type, message and the log of its traceback."""
    monkeypatch.setenv("WIDTHWISE_CACHE", str(tmp_path / "cache"))
    from widthwise.cli import _crash

    try:
        raise RuntimeError("boom")
    except RuntimeError as err:
        line = _crash(err)
    assert line.startswith("RuntimeError: boom (traceback in ") and str(tmp_path / "cache" / "crashes") in line
    log = Path(line.rsplit("traceback in ", 1)[1].rstrip(")"))
    assert "Traceback (most recent call last)" in log.read_text() and "boom" in log.read_text()


def test_an_absurd_learning_rate_diverges_as_data_with_only_widthwise_lines(tmp_path, capsys):
    """``optim.lr=1e308`` is a valid number: the run diverges, exit 3, recorded, plots written; stderr holds only
    widthwise's own lines (matplotlib's overflow warnings on the 1e308 ticks are not shown)."""
    run = tmp_path / "run"
    code = main(["train", "tiny", "--out", str(run), *TINY, "--set", "optim.lr=1e308", "--set", "schedule.warmup=0",
                 "--set", "train.sample_tokens=0", "--set", "train.tensorboard=false", "--quiet"])
    err = capsys.readouterr().err
    assert code == 3, err
    assert json.loads((run / "summary.json").read_text())["status"] == "diverged"
    assert (run / "plots" / "loss.png").is_file()
    assert all(line.startswith("widthwise: ") for line in err.splitlines() if line.strip()), err


def test_a_second_sweep_on_a_directory_a_driver_holds_is_refused(tmp_path, capsys):
    """Two drivers on one sweep directory would run its points twice: the second is one line, exit 2, and writes
    nothing there."""
    from widthwise.app.sweep.worker import run_lock

    (tmp_path / "s.yaml").write_text(SWEEP_OK)
    out = tmp_path / "o"
    with run_lock(out) as locked:  # the lock a running driver holds
        assert locked
        code = main(["sweep", str(tmp_path / "s.yaml"), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "another widthwise sweep is running on it" in err, err
    assert not out.exists()
