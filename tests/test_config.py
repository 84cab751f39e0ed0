"""Training config: recipes load, --set overrides, key/type errors name the key, TOML round trip."""

import tomllib
from pathlib import Path

import pytest

from upsample.models import registry
from upsample.training.config import Config, config_from_dict, load_config, overrides_to_table, parse_value, to_toml
from upsample.errors import UserError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))


def test_recipes_exist():
    names = {p.stem for p in CONFIGS}
    assert {"tiny", "espcn-x3", "vdsr", "vapsr-x2", "vapsr-s-x2", "rrdbnet-x4-psnr"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_recipe_loads_and_names_a_registered_model(path):
    cfg = load_config(path)
    spec = registry.get_spec(cfg.model.name)
    assert spec.kind == "generator"
    assert all(t.startswith("../shared/datasets/train/") for t in cfg.data.train)
    if spec.scale is None:
        assert cfg.model.scales  # multi-scale nets must say which scales
    else:
        assert cfg.data.patch_size % spec.scale == 0
    assert load_config(path) == cfg
    assert config_from_dict(tomllib.loads(to_toml(cfg))) == cfg


def test_recipe_settings_follow_the_papers():
    vdsr = load_config(CONFIGS[0].parent / "vdsr.toml")
    assert (vdsr.optim.name, vdsr.optim.lr, vdsr.optim.momentum, vdsr.optim.weight_decay) == ("sgd", 0.1, 0.9, 1e-4)
    assert vdsr.optim.clip_adjustable and vdsr.model.scales == [2, 3, 4] and vdsr.data.patch_size == 41
    espcn = load_config(CONFIGS[0].parent / "espcn-x3.toml")
    assert espcn.data.patch_size == 51 and espcn.degrade.kind == "bicubic" and espcn.optim.lr == 1e-3
    vapsr = load_config(CONFIGS[0].parent / "vapsr-x2.toml")
    assert (vapsr.loss.name, vapsr.train.ema, vapsr.data.patch_size) == ("l1", 0.999, 96)
    rrdb = load_config(CONFIGS[0].parent / "rrdbnet-x4-psnr.toml")
    assert (rrdb.optim.lr, rrdb.loss.name) == (2e-4, "l1")


def test_overrides_parse_toml_values_and_bare_strings():
    assert parse_value("1e-4") == 1e-4 and parse_value("true") is True and parse_value("[2, 3]") == [2, 3]
    assert parse_value("vapsr-x2") == "vapsr-x2" and parse_value('"a b"') == "a b"
    assert overrides_to_table(["optim.lr=5e-4", "model.kwargs.num_feat=8", "model.name=vdsr"]) == {
        "optim": {"lr": 5e-4}, "model": {"kwargs": {"num_feat": 8}, "name": "vdsr"}}
    cfg = config_from_dict({"optim": {"lr": 1}}, ["optim.lr=2e-4", "train.steps=7", "model.scales=[2,3]"])
    assert cfg.optim.lr == 2e-4 and isinstance(cfg.optim.lr, float) and cfg.train.steps == 7
    assert cfg.model.scales == [2, 3]
    assert config_from_dict({}) == Config()
    with pytest.raises(UserError, match="section.key=value"):
        overrides_to_table(["optim.lr"])


@pytest.mark.parametrize("table,sets,message", [
    ({"optim": {"lrate": 1e-3}}, [], "unknown key 'optim.lrate'"),
    ({"optimizer": {}}, [], "unknown key 'optimizer'"),
    ({}, ["train.stepz=3"], "unknown key 'train.stepz'"),
    ({"optim": {"lr": "fast"}}, [], "optim.lr must be float"),
    ({"data": {"batch_size": 1.5}}, [], "data.batch_size must be int"),
    ({"data": {"flip": 1}}, [], "data.flip must be bool"),
    ({"train": {"steps": True}}, [], "train.steps must be int"),
    ({"data": {"train": "../x"}}, [], "data.train must be a list"),
    ({"model": {"scales": [2, "3"]}}, [], r"model.scales\[1\] must be int"),
    ({"optim": 3}, [], "optim must be a table"),
    ({"optim": {"name": "lion"}}, [], "optim.name must be one of sgd, adam, adamw"),
    ({"degrade": {"jpeg_quality": [90, 30]}}, [], "degrade.jpeg_quality must be a range"),
    ({"data": {"patch_size": 0}}, [], "data.patch_size must be > 0"),
    ({"train": {"ema": 1.5}}, [], r"train.ema must be in \[0, 1\)"),
])
def test_bad_values_name_the_key(table, sets, message):
    with pytest.raises(UserError, match=message):
        config_from_dict(table, sets)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("[train\nsteps = 1\n")
    with pytest.raises(UserError, match="invalid TOML"):
        load_config(tmp_path / "bad.toml")


def test_to_toml_writes_every_value_type():
    cfg = config_from_dict({"model": {"name": "vdsr", "kwargs": {"num_layers": 3, "bias": False},
                                      "scales": [2, 4]},
                            "data": {"train": ['a "quoted" path', "b\\c"]}, "sched": {"eta_min": 1e-7}})
    text = to_toml(cfg)
    assert "[model]" in text and "[train]" in text
    assert config_from_dict(tomllib.loads(text)) == cfg
