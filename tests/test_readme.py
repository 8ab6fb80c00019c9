"""The README's API example runs as written (HF LlamaForCausalLM from a config, no download)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_example_runs(tmp_path, monkeypatch, capsys):
    blocks = _python_blocks()
    assert blocks, "README has no python example"
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], str(README), "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out
    assert "widthwise plan: recipe=robust" in printed
    assert (tmp_path / "exported" / "config.json").exists()


def test_readme_plan_excerpt_matches_the_real_table(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(_python_blocks()[0], str(README), "exec"), {"__name__": "readme"})
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
