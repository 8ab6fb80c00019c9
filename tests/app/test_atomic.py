"""Atomic writes: whole files or nothing, readable by the team (0644, not mkstemp's 0600)."""

from __future__ import annotations

import stat

from widthwise.app.atomic import atomic_write_text


def test_atomic_write_replaces_whole_file_readable_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / "report.md"
    path.write_text("old")
    atomic_write_text(path, "new")
    assert path.read_text() == "new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]
