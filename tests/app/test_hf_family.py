"""`model.family: hf`: transformers models (Llama, Mistral, Qwen2 with biases, tied Llama) through train, diagnose and
export, scaled by `model.width` against a base like the reference model's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from widthwise.app.config import apply_overrides, load_config
from widthwise.app.export import relative_difference
from widthwise.app.rundir import RunDir
from widthwise.app.setup import build, plan_for
from widthwise.cli import main
from widthwise.errors import ConfigError

FAST = ["train.threads=1", "train.progress=false", "train.steps=10", "train.checkpoint_every=10",
        "train.eval_every=10", "diagnostics.every=5", "train.sample_tokens=8", "train.tensorboard=false",
        "train.plots=false", "train.compile=false"]
FAMILIES = {
    "llama": ("{class: LlamaConfig}", "LlamaForCausalLM", False),
    "mistral": ("{class: MistralConfig, sliding_window: null}", "MistralForCausalLM", False),
    "qwen2": ("{class: Qwen2Config}", "Qwen2ForCausalLM", False),
    "llama_tied": ("{class: LlamaConfig}", "LlamaForCausalLM", True),
}

pytestmark = pytest.mark.usefixtures("data_cache", "one_thread")


def hf_overrides(family: str) -> list[str]:
    fields, _, tied = FAMILIES[family]
    return ["model.family=hf", f"model.hf_config={fields}", f"model.tie_embeddings={str(tied).lower()}"]


def sets(*overrides: str) -> list[str]:
    return [a for o in (*FAST, *overrides) for a in ("--set", o)]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_train_and_export_each_family(family, tmp_path):
    from transformers import AutoModelForCausalLM

    run, out = tmp_path / "run", tmp_path / "hf"
    assert main(["train", "tiny", "--out", str(run), *sets(*hf_overrides(family))]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["val_loss"] < 6.3  # below uniform over 512 tokens
    rundir = RunDir.open(run)
    plan = {p["name"]: p for p in rundir.plan()["params"]}
    q = plan["lm.model.layers.0.self_attn.q_proj.weight"]
    assert q["role"] == "hidden" and q["width_mult"] == 2  # width 32 over base 16, from real shapes
    assert "lm.model.layers.0.self_attn.q_proj.weight.row" in plan
    if family == "qwen2":
        assert plan["lm.model.layers.0.self_attn.q_proj.bias"]["role"] == "vector"
    if family == "llama_tied":
        assert "lm.lm_head.weight" not in plan and plan["lm.model.embed_tokens.weight"]["role"] == "embedding"
    else:
        assert plan["lm.lm_head.weight"]["role"] == "head"

    assert main(["export", str(run), "--out", str(out)]) == 0
    hf = AutoModelForCausalLM.from_pretrained(out)
    assert type(hf).__name__ == FAMILIES[family][1] and hf.config.tie_word_embeddings == FAMILIES[family][2]
    built = build(rundir.config(), rundir.resolved()["model"]["vocab_size"], torch.device("cpu"))
    built.model.load_state_dict(rundir.checkpoint().model, strict=False)
    x = torch.randint(0, hf.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert relative_difference(hf(x).logits, built.model.eval()(x)) < 1e-4
    assert not [k for k in hf.state_dict() if "parametrizations" in k]


def test_diagnose_an_hf_run(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "tiny", "--out", str(run), *sets(*hf_overrides("qwen2"))]) == 0
    assert main(["diagnose", str(run), "--no-plots"]) == 0
    d = json.loads((run / "diagnostics.json").read_text())
    q = d["matrices"]["lm.model.layers.0.self_attn.q_proj.weight"]
    assert q["sigma_max"] > 0 and q["sublayer_gain"] > 0 and d["width"] == 32 and d["base_width"] == 16


def test_hf_plans_on_the_meta_device_at_any_width():
    """What a sweep does for each point before it runs: plan the model at its width, on the meta device."""
    wider = ["model.width=64", "model.heads=4", "model.kv_heads=2"]
    config = apply_overrides(load_config("tiny"), [*hf_overrides("qwen2"), *wider])
    plan = plan_for(config, 512)
    down = plan["lm.model.layers.1.mlp.down_proj.weight"]
    assert down.width_mult == 4 and down.lr_factor == pytest.approx(0.25)
    assert {fm.module for fm in plan.forward_multipliers} == {"lm.lm_head"}  # head 1/m; head dim kept: no query


@pytest.mark.parametrize(("overrides", "needle"), [
    (["model.family=hf"], "model.hf_config: model.family hf needs a config class"),
    (["model.family=hf", "model.hf_config={class: NoSuchConfig}"], "'NoSuchConfig' is not a transformers config"),
    (["model.family=hf", "model.hf_config={class: LlamaConfig, hidden_size: 64}"], "hidden_size: set by model.width"),
    (["model.family=hf", "model.hf_config={class: GPT2Config}"], "does not take Llama-style fields"),
    (["model.family=hf", "model.hf_config={class: LlamaConfig}", "model.head_multiplier=0.5"],
     "model.head_multiplier: not settable with model.family hf"),
    (["model.family=hf", "model.hf_config={class: LlamaConfig}", "multipliers.absorb_forward=true"],
     "multipliers.absorb_forward"),
    (["model.hf_config={class: LlamaConfig}"], "only used with model.family hf"),
])
def test_bad_hf_configs_are_refused(overrides, needle, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "tiny", "--out", str(run), *sets(*overrides)]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
    assert not Path(run).exists() or not any(Path(run).iterdir())


def test_an_unknown_hf_field_is_refused_not_ignored():
    config = apply_overrides(load_config("tiny"), ["model.family=hf",
                                                   "model.hf_config={class: LlamaConfig, sliding_window: 8}"])
    with pytest.raises(ConfigError, match="model.hf_config.sliding_window: LlamaConfig has no such field"):
        plan_for(config, 512)
