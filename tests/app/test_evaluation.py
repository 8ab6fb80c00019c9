"""`widthwise eval`: real lm-eval on the shipped tasks; a trained tiny run beats an untrained model on both."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from widthwise.app.evaluation import read_eval
from widthwise.cli import main

#: A tiny model trained long enough (about 40 s here) to use its context: 600 steps of 1,024 tokens.
TRAIN = ["train.threads=1", "train.progress=false", "train.steps=600", "train.seq_len=64", "train.batch_size=16",
         "train.checkpoint_every=600", "train.eval_every=600", "diagnostics.every=null", "train.sample_tokens=0",
         "train.plots=false", "train.tensorboard=false", "optim.lr=0.02", "model.width=64", "model.heads=4",
         "model.kv_heads=2", "scaling.base_width=32"]
TASKS = "shakespeare_cloze,shakespeare_next_line"

pytestmark = pytest.mark.usefixtures("data_cache", "one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", "tiny", "--out", str(run), *[a for o in TRAIN for a in ("--set", o)]]) == 0
    return run


@pytest.fixture(scope="module")
def untrained(trained, tmp_path_factory) -> Path:
    """The same architecture and tokenizer, randomly initialised (HF's own init), as an HF folder."""
    from transformers import AutoModelForCausalLM

    import widthwise as ww

    model, tokenizer = ww.load_model(trained)
    torch.manual_seed(0)
    random = AutoModelForCausalLM.from_config(model.config)
    out = tmp_path_factory.mktemp("untrained") / "hf"
    random.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.slow
def test_a_trained_run_beats_an_untrained_model_on_both_tasks(trained, untrained, tmp_path, capsys):
    assert main(["eval", str(trained), "--tasks", TASKS]) == 0
    assert "shakespeare_cloze" in capsys.readouterr().out
    ours = json.loads((trained / "eval.json").read_text())["tasks"]
    assert read_eval(trained)["tasks"] == ours
    exported = tmp_path / "hf"
    assert main(["export", str(trained), "--out", str(exported)]) == 0
    assert main(["eval", str(exported), "--tasks", TASKS]) == 0
    same = json.loads((tmp_path / "hf.eval.json").read_text())["tasks"]  # beside the HF folder
    assert main(["eval", str(untrained), "--tasks", TASKS]) == 0
    base = json.loads(untrained.with_name("hf.eval.json").read_text())["tasks"]
    for name in TASKS.split(","):
        assert ours[name]["n"] == base[name]["n"] == 500
        assert ours[name]["value"] == pytest.approx(same[name]["value"], rel=1e-4)  # the export scores alike
        for r in (ours[name], base[name]):
            assert r["stderr"] is not None and r["stderr"] > 0
    cloze, line = ours["shakespeare_cloze"], ours["shakespeare_next_line"]
    assert cloze["metric"] == "perplexity" and not cloze["higher_is_better"]
    assert cloze["value"] < base["shakespeare_cloze"]["value"] / 10
    assert line["metric"] == "acc_mutual_info" and line["higher_is_better"]
    other = base["shakespeare_next_line"]
    # Two-sample z > 2.5 (measured here: 0.33-0.34 trained, fp32 or bf16, against about 0.24; stderr about 0.02 each).
    assert line["value"] - other["value"] > 2.5 * math.hypot(line["stderr"], other["stderr"])
    assert line["value"] > 0.25 + 2.5 * line["stderr"]  # above chance among 4
    assert set(line["metrics"]) == {"acc", "acc_norm", "acc_mutual_info"}


@pytest.fixture(scope="module")
def random_hf(tmp_path_factory) -> Path:
    """A random tiny Llama with the bundled corpus's tokenizer, as an HF folder (no training)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from widthwise.app.config import load_config
    from widthwise.app.export import hf_tokenizer
    from widthwise.app.setup import load_data

    tokenizer = hf_tokenizer(load_data(load_config("tiny")).tokenizer)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=64))
    out = tmp_path_factory.mktemp("random") / "hf"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_limit_list_and_refusals(random_hf, capsys):
    assert main(["eval", str(random_hf), "--tasks", "shakespeare_next_line", "--limit", "8"]) == 0
    result = json.loads(random_hf.with_name("hf.eval.json").read_text())
    assert result["limit"] == 8 and result["tasks"]["shakespeare_next_line"]["n"] == 8
    capsys.readouterr()
    assert main(["eval", "--list"]) == 0
    out = capsys.readouterr().out
    assert "shakespeare_cloze" in out and "shakespeare_next_line" in out
    for argv, needle in ((["eval", str(random_hf), "--tasks", "no_such_task"], "unknown task 'no_such_task'"),
                         (["eval", str(random_hf.parent / "nope"), "--tasks", TASKS], "no such run directory"),
                         (["eval", str(random_hf.parent), "--tasks", TASKS], "neither a widthwise run directory"),
                         (["eval", str(random_hf)], "--tasks")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1


def test_bootstrapped_stderr_is_computed_without_forking(random_hf, monkeypatch):
    """lm-eval forks a multiprocessing pool for bootstrapped standard errors (perplexity here), which can deadlock a
    process running torch's thread pools (a `widthwise eval` hung that way): evaluate() must never create one."""
    import multiprocessing
    import os

    from widthwise.app.evaluation import evaluate

    def refuse(*args, **kwargs):
        raise AssertionError("a multiprocessing pool was created during widthwise eval")

    monkeypatch.setattr(multiprocessing, "Pool", refuse)
    monkeypatch.delenv("DISABLE_MULTIPROC", raising=False)
    result = evaluate(random_hf, ["shakespeare_cloze"], limit=8, write=False)
    cloze = result["tasks"]["shakespeare_cloze"]
    assert cloze["metric"] == "perplexity" and cloze["n"] == 8
    assert cloze["stderr"] is not None and cloze["stderr"] > 0  # bootstrapped, in this process
    assert "DISABLE_MULTIPROC" not in os.environ  # the environment is restored
