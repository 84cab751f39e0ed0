"""`make reproduce` (tools/reproduce.py) finds the chain of runs a shipped model needs."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("reproduce", ROOT / "tools" / "reproduce.py")
reproduce = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reproduce)


@pytest.mark.parametrize("toml", sorted((ROOT / "src" / "upsample" / "weights").glob("*.toml")),
                         ids=lambda p: p.stem)
def test_every_shipped_model_has_a_chain_that_starts_from_scratch(toml):
    chain = reproduce.stages(toml, f"runs/{toml.stem}")
    assert chain[-1] == (toml, f"runs/{toml.stem}")
    for config, _ in chain:
        assert config.is_file()


def test_a_later_stage_trains_its_start_first():
    chain = reproduce.stages(ROOT / "configs" / "esrgan-x4.toml", "runs/esrgan-x4")
    assert [(c.name, d) for c, d in chain] == [("rrdbnet-x4-psnr.toml", "runs/rrdbnet-x4-psnr"),
                                               ("esrgan-x4.toml", "runs/esrgan-x4")]


def test_a_missing_stage_recipe_or_a_loop_stops_with_one_line(tmp_path, monkeypatch):
    bad = tmp_path / "x.toml"
    bad.write_text('[train]\ninit = "runs/no-such-stage/best.safetensors"\n')
    with pytest.raises(SystemExit, match="configs/no-such-stage.toml"):
        reproduce.stages(bad, "runs/x")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "a.toml").write_text('[train]\ninit = "runs/a/best.safetensors"\n')
    monkeypatch.setattr(reproduce, "ROOT", tmp_path)
    with pytest.raises(SystemExit, match="loops"):
        reproduce.stages(tmp_path / "configs" / "a.toml", "runs/a")
