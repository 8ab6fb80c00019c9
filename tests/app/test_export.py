"""`widthwise export` and `ww.load_model`: a run as a plain HF Llama with equal logits and tokens, and every refusal."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import widthwise as ww
from widthwise.app.export import fold_tied_head, relative_difference
from widthwise.app.rundir import RunDir
from widthwise.app.setup import build, load_data
from widthwise.cli import main
from widthwise.errors import ExportError

FAST = ["train.threads=1", "train.progress=false", "train.steps=10", "train.checkpoint_every=10",
        "train.eval_every=10", "diagnostics.every=null", "train.sample_tokens=0", "train.tensorboard=false",
        "train.plots=false"]
TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer"

pytestmark = pytest.mark.usefixtures("data_cache", "one_thread")


def sets(*overrides: str) -> list[str]:
    return [a for o in (*FAST, *overrides) for a in ("--set", o)]


def train(tmp: Path, *overrides: str) -> Path:
    run = tmp / "run"
    assert main(["train", "tiny", "--out", str(run), *sets(*overrides)]) == 0
    return run


@pytest.fixture(scope="module")
def untied(tmp_path_factory) -> Path:
    return train(tmp_path_factory.mktemp("untied"))


@pytest.fixture(scope="module")
def tied(tmp_path_factory) -> Path:
    """Tied embeddings with every fixed forward multiplier away from 1: embedding x2, head 1/m, attention 0.1."""
    return train(tmp_path_factory.mktemp("tied"), "model.tie_embeddings=true", "model.embedding_multiplier=2.0",
                 "model.attention_scale=0.1", "scaling.recipe=mup")


def ours(run: Path) -> tuple[nn.Module, object]:
    """The run's own model (multipliers unfolded) at its latest checkpoint, and its tokenizer."""
    rundir = RunDir.open(run)
    built = build(rundir.config(), rundir.resolved()["model"]["vocab_size"], torch.device("cpu"))
    built.model.load_state_dict(rundir.checkpoint().model, strict=False)
    return built.model.eval(), load_data(rundir.config()).tokenizer


def ids(tokenizer, text: str = TEXT) -> torch.Tensor:
    return torch.tensor([tokenizer.encode(text).ids[:32]])


@pytest.mark.parametrize("which", ["untied", "tied"])
def test_export_round_trip(which, request, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    run = request.getfixturevalue(which)
    out = tmp_path / "hf"
    assert main(["export", str(run), "--out", str(out)]) == 0
    assert "LlamaForCausalLM" in capsys.readouterr().out
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "README.md"} <= {
        p.name for p in out.iterdir()}
    model, tokenizer = ours(run)
    assert any("parametrizations" in k for k in model.state_dict())  # the run's model has multipliers to fold
    hf = AutoModelForCausalLM.from_pretrained(out)
    assert type(hf) is LlamaForCausalLM and hf.config.tie_word_embeddings == (which == "tied")
    stored = load_file(out / "model.safetensors")
    assert not [k for k in stored if "parametrizations" in k or k.endswith((".row", ".col", ".original"))]
    plain = set(LlamaForCausalLM(hf.config).state_dict())
    assert set(stored) <= plain and plain - set(stored) <= {"lm_head.weight"}
    x = ids(tokenizer)
    with torch.no_grad():
        assert relative_difference(hf(x).logits, model(x)) < 1e-4
    hf_tok = AutoTokenizer.from_pretrained(out)
    assert hf_tok(TEXT)["input_ids"] == tokenizer.encode(TEXT).ids
    assert hf_tok.decode(hf_tok(TEXT)["input_ids"]) == TEXT
    assert hf_tok.eos_token_id == hf.config.eos_token_id == tokenizer.token_to_id("<|endoftext|>")
    card = (out / "README.md").read_text()
    summary = json.loads((run / "summary.json").read_text())
    config = RunDir.open(run).config()
    assert f"| recipe | {config.scaling.recipe} |" in card
    assert "| width | 32 |" in card and "| base width | 16 |" in card
    assert f"| validation loss | {summary['val_loss']} |" in card and f"| tokens | {summary['tokens']} |" in card


def test_tied_export_moves_the_head_multiplier_into_the_final_norm(tied, tmp_path):
    out = tmp_path / "hf"
    assert main(["export", str(tied), "--out", str(out)]) == 0
    model, _ = ours(tied)
    stored = load_file(out / "model.safetensors")
    cfg = model.config
    assert cfg.head_multiplier == 0.5 and cfg.embedding_multiplier == 2.0
    torch.testing.assert_close(stored["model.norm.weight"], model.norm.weight.detach() * 0.25)  # h / e
    torch.testing.assert_close(stored["model.embed_tokens.weight"], model.embed.weight.detach() * 2.0)
    q = model.blocks[0].attn.q_proj.weight.detach() * 0.1 * cfg.head_dim**0.5  # scale over HF's 1/sqrt(d_head)
    torch.testing.assert_close(stored["model.layers.0.self_attn.q_proj.weight"], q)


def test_load_model_reads_run_and_hf_folders_alike(untied, tmp_path):
    out = tmp_path / "hf"
    assert main(["export", str(untied), "--out", str(out)]) == 0
    from_run, tok_run = ww.load_model(untied)
    from_hf, tok_hf = ww.load_model(out)
    model, tokenizer = ours(untied)
    x = ids(tokenizer)
    assert tok_run(TEXT)["input_ids"] == tok_hf(TEXT)["input_ids"] == tokenizer.encode(TEXT).ids
    with torch.no_grad():
        assert relative_difference(from_run(x).logits, model(x)) < 1e-4
        assert relative_difference(from_hf(x).logits, model(x)) < 1e-4
    assert not from_hf.training and not from_run.training


def test_export_at_a_step(untied, tmp_path, capsys):
    assert main(["export", str(untied), "--out", str(tmp_path / "a"), "--step", "10"]) == 0
    assert "at step 10" in capsys.readouterr().out
    assert main(["export", str(untied), "--out", str(tmp_path / "b"), "--step", "7"]) == 2
    assert "no checkpoint step_00000007" in capsys.readouterr().err


def test_refusals_are_one_line_and_exit_2(untied, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    assert main(["export", str(untied), "--out", str(taken)]) == 2
    err = capsys.readouterr().err
    assert "already exists and is not empty" in err and err.count("\n") == 1
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]

    assert main(["export", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o1")]) == 2
    assert "no such run directory" in capsys.readouterr().err

    empty = tmp_path / "empty"
    shutil.copytree(untied, empty, ignore=shutil.ignore_patterns("checkpoints"))
    assert main(["export", str(empty), "--out", str(tmp_path / "o2")]) == 2
    assert "no checkpoint to export" in capsys.readouterr().err

    broken = tmp_path / "broken"
    shutil.copytree(untied, broken)
    weights = broken / "checkpoints" / "step_00000010" / "model.safetensors"
    state = load_file(weights)
    state["blocks.0.mlp.up_proj.parametrizations.weight.original"][0, 0] = float("nan")
    save_file(state, weights)
    assert main(["export", str(broken), "--out", str(tmp_path / "o3")]) == 2
    err = capsys.readouterr().err
    assert "non-finite weights" in err and "up_proj" in err
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()

    moved = tmp_path / "moved"  # the data split changed under the run: the tokenizer would not be the run's
    shutil.copytree(untied, moved)
    text = (moved / "config.yaml").read_text()
    assert "  split_seed: 0\n" in text
    (moved / "config.yaml").write_text(text.replace("  split_seed: 0\n", "  split_seed: 7\n", 1))
    assert main(["export", str(moved), "--out", str(tmp_path / "o4")]) == 2
    assert "data or tokenizer changed" in capsys.readouterr().err

    with pytest.raises(ww.errors.RunError, match="neither a widthwise run directory"):
        ww.load_model(tmp_path)


class TiedNoNorm(nn.Module):
    """A tied LM whose head reads the embedding directly: no final norm to carry the head's factor."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(16, width)
        self.head = nn.Linear(width, 16, bias=False)
        self.head.weight = self.embed.weight

    def get_input_embeddings(self) -> nn.Module:
        return self.embed

    def get_output_embeddings(self) -> nn.Module:
        return self.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def test_a_tied_hf_head_multiplier_goes_into_the_final_norm_exactly():
    from helpers import llama

    wide = llama(64, tie_word_embeddings=True)
    ww.apply_forward_multipliers(wide, ww.plan(wide, base=llama(32, meta=True, tie_word_embeddings=True),
                                               recipe="mup"))
    x = torch.randint(0, 128, (1, 8))
    with torch.no_grad():
        before = wide(x).logits
    with pytest.raises(ValueError, match="tied"):  # the shared matrix itself cannot take it
        ww.fold_multipliers(wide)
    assert fold_tied_head(wide) == 0.5
    ww.fold_multipliers(wide)
    with torch.no_grad():
        assert relative_difference(wide(x).logits, before) < 1e-6
    assert wide.lm_head.weight is wide.model.embed_tokens.weight


def test_a_tied_head_multiplier_without_a_final_norm_is_refused():
    model = TiedNoNorm(16)
    ww.apply_forward_multipliers(model, ww.plan(model, base=TiedNoNorm(8), recipe="mup"))
    with pytest.raises(ExportError, match="no final norm feeds it"):
        fold_tied_head(model)
    untied = TiedNoNorm(16)
    assert fold_tied_head(ww.fold_multipliers(untied)) is None  # nothing to move
