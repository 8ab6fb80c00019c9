"""The README's API example runs as written, matches examples/quickstart.py, and shows the real plan table.

The example builds HF's LlamaForCausalLM from a config: no download.
"""

import re
import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
EXAMPLE = ROOT / "examples" / "quickstart.py"


def _readme_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    return blocks[0]


def _code_lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines() if line.strip()]


def _run_readme_example(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(_readme_example(), str(README), "exec"), {"__name__": "readme"})


def test_readme_example_runs(tmp_path, monkeypatch, capsys):
    _run_readme_example(tmp_path, monkeypatch)
    assert "widthwise plan: recipe=robust" in capsys.readouterr().out


def test_readme_example_is_the_start_of_the_example_file():
    """Every line of the README's block appears, in order, in examples/quickstart.py (the README points to it)."""
    assert "examples/quickstart.py" in README.read_text()
    example = iter(_code_lines(EXAMPLE.read_text()))
    for line in _code_lines(_readme_example()):
        assert any(line == other for other in example), f"not in {EXAMPLE.name} (in this order): {line}"


def test_example_file_runs_and_exports_a_plain_model(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(EXAMPLE), run_name="__main__")  # it checks the reloaded logits itself
    printed = capsys.readouterr().out
    assert "widthwise plan: recipe=robust" in printed
    assert "reloads as a plain LlamaForCausalLM" in printed
    assert (tmp_path / "exported" / "config.json").exists()


def test_readme_plan_excerpt_matches_the_real_table(tmp_path, monkeypatch, capsys):
    _run_readme_example(tmp_path, monkeypatch)
    printed = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    rows = {line.split()[0]: line.split() for line in printed}
    excerpt = re.search(r"The printed plan.*?```\n(.*?)```", README.read_text(), flags=re.S).group(1)
    lines = excerpt.splitlines()
    assert lines[0].split() == printed[1].split()  # the header
    for line in lines[1:]:
        if line.startswith("forward multiplier"):
            assert line in printed
        else:
            assert rows[line.split()[0]] == line.split(), line
