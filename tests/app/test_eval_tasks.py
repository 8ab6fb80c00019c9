"""The shipped offline lm-eval tasks: deterministic, built from held-out plays only, well-formed."""

from __future__ import annotations

import json

import pytest
import yaml

from widthwise.app.data import load_documents, split_documents
from widthwise.app.eval_tasks import HELD_OUT, MAX_ITEMS, TASKS, build_tasks, speeches


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_tasks(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def split():
    train, val = split_documents(load_documents(None), *HELD_OUT)
    return "\n".join(d.text for d in train), "\n".join(d.text for d in val)


def items(folder, name):
    return [json.loads(line) for line in (folder / f"{name}.jsonl").read_text().splitlines()]


def test_tasks_are_deterministic(folder, tmp_path):
    again = build_tasks(tmp_path)
    for name in TASKS:
        assert (again / f"{name}.jsonl").read_bytes() == (folder / f"{name}.jsonl").read_bytes()
        config = yaml.safe_load((folder / f"{name}.yaml").read_text())
        assert config["task"] == name and config["dataset_path"] == "json"
        assert config["dataset_kwargs"]["data_files"]["test"] == str(folder / f"{name}.jsonl")


def test_cloze_items_are_the_last_words_of_held_out_speeches(folder, split):
    train, val = split
    cloze = items(folder, "shakespeare_cloze")
    assert len(cloze) == MAX_ITEMS
    for item in cloze[::25]:
        assert item["target"].startswith(" ") and item["target"][1:].replace("'", "").isalpha()
        last_line = item["context"].split("\n")[-1]
        assert last_line + item["target"] in val and item["context"].split("\n\n")[-1] not in train


def test_next_line_items_hold_the_true_next_line_among_four(folder, split):
    train, val = split
    nl = items(folder, "shakespeare_next_line")
    assert len(nl) == MAX_ITEMS
    labels = [item["label"] for item in nl]
    assert min(labels.count(k) for k in range(4)) > MAX_ITEMS // 6  # the gold's position is shuffled
    for item in nl[::25]:
        choices, gold = item["choices"], item["choices"][item["label"]]
        assert len(set(choices)) == 4
        last_line = item["context"].split("\n")[-1]
        assert last_line + "\n" + gold in val and item["context"].split("\n\n")[-1] not in train
        assert all(0.75 * len(gold) <= len(c) <= 1.25 * len(gold) + 1 for c in choices)


def test_speeches_read_speaker_blocks():
    text = "ACT I\n\nEnter PAGE\n\nPAGE\n[Within]\nWho's there?\n\nSIR HUGH EVANS\nHere is Got's plessing,\nand more.\n"
    assert speeches(text) == [("PAGE", ["Who's there?"]), ("SIR HUGH EVANS", ["Here is Got's plessing,", "and more."])]
