"""``MetricsLog``: JSON lines and TensorBoard scalars, read back with TensorBoard's own readers."""

from __future__ import annotations

import json

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from widthwise.app.metrics import MetricsLog, read_metrics


def _events(tb_dir):
    (path,) = tb_dir.glob("events.out.tfevents.*")
    return [e for e in EventFileLoader(str(path)).Load() if e.HasField("summary")]


def test_each_record_is_one_line_and_one_tensorboard_event_with_all_its_scalars(tmp_path):
    files = {"metrics": tmp_path / "metrics.jsonl", "diagnostics": tmp_path / "diagnostics.jsonl"}
    log = MetricsLog(files, tmp_path / "tb")
    for step in (1, 2, 3):
        log.write({"step": step, "tokens": 64 * step, "train_loss": 4.0 / step, "lr": 1e-3, "note": "text",
                   "flag": True})
    log.write({"step": 3, "matrices": {}}, "diagnostics", scalars={"sigma_max": {"attn.q_proj": 2.5}})
    log.close()
    assert [r["step"] for r in read_metrics(files["metrics"])] == [1, 2, 3]
    assert json.loads(files["diagnostics"].read_text())["step"] == 3
    events = _events(tmp_path / "tb")
    assert [e.step for e in events] == [1, 2, 3, 3]  # one event a record, not one per scalar
    assert [v.tag for v in events[0].summary.value] == ["tokens", "train_loss", "lr"]  # numbers only, no bools
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"tokens", "train_loss", "lr", "diagnostics/sigma_max/attn.q_proj"}
    loss = acc.Scalars("train_loss")
    assert [s.step for s in loss] == [1, 2, 3] and [round(s.value, 6) for s in loss] == [4.0, 2.0, 1.333333]
    assert acc.Scalars("diagnostics/sigma_max/attn.q_proj")[0].value == 2.5


def test_a_record_without_numbers_writes_no_event(tmp_path):
    log = MetricsLog({"metrics": tmp_path / "metrics.jsonl"}, tmp_path / "tb")
    log.write({"step": 1, "status": "text"})
    log.close()
    assert _events(tmp_path / "tb") == []
    assert read_metrics(tmp_path / "metrics.jsonl") == [{"step": 1, "status": "text"}]
