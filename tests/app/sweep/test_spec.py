"""Sweep files: parsing, validation with one-line errors, expansion into grid points with stable ids."""

from __future__ import annotations

import pytest
import yaml

from widthwise.app.config import load_config
from widthwise.app.sweep.spec import expand, load_sweep, parse_sweep, run_id, run_name
from widthwise.errors import ConfigError, SweepError

GRID = {"model.width": [32, 64], "optim.lr": [1e-2, 3e-2], "scaling.recipe": ["sp", "robust"]}


def spec(**kw):
    data = {"base": "tiny", "grid": GRID, "set": {"model.kv_heads": 2, "scaling.base_width": None}, **kw}
    return parse_sweep(data)


def test_expansion_is_the_product_with_seeds_last_and_heads_following_width():
    points = expand(spec(seeds=[0, 1]))
    assert len(points) == 2 * 2 * 2 * 2
    assert points[0].params == {"model.width": 32, "optim.lr": 1e-2, "scaling.recipe": "sp", "train.seed": 0}
    assert points[1].params["train.seed"] == 1
    for p in points:
        c = p.config
        assert c.model.width // c.model.heads == 16  # the base config's head dim is kept
        assert c.model.heads == c.model.kv_heads
        assert c.optim.lr == p.params["optim.lr"] and c.scaling.recipe == p.params["scaling.recipe"]
        assert c.scaling.base_width == 32  # none set: the smallest grid width is the proxy
    assert len({p.run_id for p in points}) == len(points)
    assert len({p.name for p in points}) == len(points)
    assert points[0].name.startswith("w32-lr0.01-sp-s0-")


def test_run_id_leaves_out_fields_at_their_default_so_a_new_config_field_keeps_old_sweeps_resumable():
    # The id of the tiny config as of 2026-12-02. A field added to Config later (at a default that changes
    # nothing) must not change it: hashing every field would orphan the runs of every sweep started before.
    assert run_id(load_config("tiny")) == "416c75fa21e8"
    assert run_id(load_config("tiny", ["optim.grad_clip=1.0"])) == "416c75fa21e8"  # default, set explicitly


def test_run_id_is_a_stable_hash_of_the_config_without_runtime_keys():
    config = load_config("tiny")
    assert run_id(config) == run_id(load_config("tiny"))
    assert run_id(config) == run_id(load_config("tiny", ["train.threads=3", "train.progress=false"]))
    assert run_id(config) != run_id(load_config("tiny", ["optim.lr=0.02"]))
    assert len(run_id(config)) == 12
    assert run_name({"scaling.recipe": "/a/b/my.yaml", "optim.betas": [0.9, 0.99]}, "abcdef123456") == \
        "my-betas=_0.9_0.99_-abcdef"


def test_an_explicit_base_width_is_kept():
    points = expand(parse_sweep({"base": "tiny", "grid": {"model.width": [32, 64]},
                                 "set": {"model.kv_heads": 2, "scaling.base_width": 16}}))
    assert {p.config.scaling.base_width for p in points} == {16}


def test_base_path_is_relative_to_the_sweep_file(tmp_path):
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump({"model": {"width": 32, "heads": 2, "kv_heads": 2}}))
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({"base": "mine.yaml", "grid": {"optim.lr": [0.01]}}))
    s = load_sweep(tmp_path / "sweep.yaml")
    assert s.base == str((tmp_path / "mine.yaml").resolve())
    assert expand(s)[0].config.model.width == 32


@pytest.mark.parametrize(("data", "expected"), [
    ([1, 2], "expected a mapping"),
    ({"grid": GRID}, "base: expected a built-in config name"),
    ({"base": "nope", "grid": GRID}, "base: nope is neither a built-in config"),
    ({"base": "tiny", "grid": GRID, "extra": 1}, "unknown key 'extra'"),
    ({"base": "tiny"}, "grid: expected a mapping"),
    ({"base": "tiny", "grid": {"optim.lr": 0.01}}, "grid: optim.lr: expected a non-empty list"),
    ({"base": "tiny", "grid": {"optim.lr": []}}, "grid: optim.lr: expected a non-empty list"),
    ({"base": "tiny", "grid": {"optim.lr": [0.1, 0.1]}}, "repeated value"),
    ({"base": "tiny", "grid": {"optim.lrr": [0.1]}}, "unknown key optim.lrr"),
    ({"base": "tiny", "grid": {"lr": [0.1]}}, "expected section.key"),
    ({"base": "tiny", "grid": {"optim.lr": [0.1]}, "set": {"optim.lr": 1}}, "both in grid and set"),
    ({"base": "tiny", "grid": {"optim.lr": [0.1]}, "set": [1]}, "set: expected a mapping"),
    ({"base": "tiny", "grid": {"optim.lr": [0.1]}, "seeds": [0, 0]}, "seeds: expected a list of distinct"),
    ({"base": "tiny", "grid": {"optim.lr": [0.1]}, "seeds": [-1]}, "seeds: expected"),
    ({"base": "tiny", "grid": {"train.seed": [1, 2]}, "seeds": [0]}, "train.seed is in grid and seeds"),
])
def test_bad_sweep_files_get_one_line_naming_the_field(data, expected):
    with pytest.raises(SweepError, match=expected) as info:
        parse_sweep(data)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("grid", "fixed", "expected"), [
    ({"optim.lr": [0.01, -1.0]}, {}, r"grid point \{optim.lr: -1.0\}: optim.lr: must be positive"),
    ({"model.width": [32, 40]}, {"model.kv_heads": 2}, r"grid point \{model.width: 40\}: grid: model.width: 40 is "
                                                       "not a positive multiple of the head dim 16"),
    ({"scaling.recipe": ["robust", "nope"]}, {}, r"grid point \{scaling.recipe: nope\}: scaling.recipe: unknown"),
])
def test_every_grid_point_is_validated_before_anything_runs(grid, fixed, expected):
    with pytest.raises(ConfigError, match=expected):
        expand(parse_sweep({"base": "tiny", "grid": grid, "set": fixed}))


def test_a_gqa_base_narrower_than_the_kv_ratio_validates():
    """tiny (2 heads, 1 KV head) at base 32, width 64: once refused for inconsistent ratios, planned by fan-in."""
    points = expand(parse_sweep({"base": "tiny", "grid": {"model.width": [32, 64]}}))
    shapes = [(p.config.model.width, p.config.model.heads, p.config.model.kv_heads) for p in points]
    assert shapes == [(32, 2, 1), (64, 4, 2)]


def test_load_sweep_errors(tmp_path):
    with pytest.raises(SweepError, match="no such sweep file"):
        load_sweep(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("grid: [\n")
    with pytest.raises(SweepError, match="not valid YAML at line"):
        load_sweep(tmp_path / "bad.yaml")


def test_same_experiment_allows_new_grid_values_and_seeds_only():
    a = spec()
    assert a.same_experiment(parse_sweep({**a.to_dict(), "grid": {**GRID, "optim.lr": [0.1]}, "seeds": [3]}))
    assert not a.same_experiment(parse_sweep({**a.to_dict(), "set": {"train.steps": 5}}))
    assert not a.same_experiment(parse_sweep({**a.to_dict(), "grid": {"optim.lr": [0.1]}}))
