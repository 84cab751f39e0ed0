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


def test_the_model_trains_in_a_run_dir_of_its_own_and_goes_on_from_it(tmp_path, monkeypatch, capsys):
    """It trained into runs/MODEL with --reset: the run dir `upsample train configs/MODEL.toml`
    uses by default, so a user's own run there was thrown away."""
    monkeypatch.setattr(reproduce, "ROOT", tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "m.toml").write_text("[train]\nsteps = 1\n")
    monkeypatch.setattr("sys.argv", ["reproduce.py", "m", "--dry-run"])
    assert reproduce.main() == 0
    first = capsys.readouterr().out
    assert "--run-dir runs/reproduce-m\n" in first and "--reset" not in first
    (tmp_path / "runs" / "reproduce-m").mkdir(parents=True)
    (tmp_path / "runs" / "reproduce-m" / "last_state.pt").write_bytes(b"")
    assert reproduce.main() == 0
    assert "--run-dir runs/reproduce-m --resume\n" in capsys.readouterr().out


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


def test_ship_packages_a_run_with_its_eval_on_the_four_benchmarks(tmp_path, monkeypatch, capsys):
    """tools/ship.py end to end on a tiny run (its import of a renamed eval function had broken it
    and `make reproduce` with it, unseen): weights, config, log and eval JSON beside each other."""
    import json

    import numpy as np
    from PIL import Image

    from upsample.models import checkpoint, registry
    spec = importlib.util.spec_from_file_location("ship", ROOT / "tools" / "ship.py")
    ship = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ship)
    rng = np.random.default_rng(0)
    for name in ship.SETS:  # stand-ins for the benchmarks: two smooth 48x48 pictures each
        (tmp_path / "bench" / name).mkdir(parents=True)
        for i in range(2):
            small = Image.fromarray(rng.integers(0, 256, (6, 6, 3), np.uint8))
            small.resize((48, 48), Image.BICUBIC).save(tmp_path / "bench" / name / f"{i}.png")
    run = tmp_path / "run"
    run.mkdir()
    checkpoint.save_checkpoint(registry.create_model("espcn-x2"), run / "best.safetensors")
    (run / "config.toml").write_text('[model]\nname = "espcn-x2"\n')
    (run / "metrics.jsonl").write_text(json.dumps({"step": 10, "loss": 0.1, "time": 36.0}) + "\n"
                                       + json.dumps({"step": 10, "val_psnr": 20.0, "val_bicubic_psnr": 19.0}) + "\n")
    monkeypatch.setattr(ship, "BENCH", tmp_path / "bench")
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path / "weights")
    monkeypatch.setattr("sys.argv", ["ship.py", "espcn-x2", str(run)])
    assert ship.main() == 0
    report = json.loads((tmp_path / "weights" / "espcn-x2.eval.json").read_text())
    assert set(report["scales"]["2"]["model"]) == set(ship.SETS) == set(report["scales"]["2"]["bicubic"])
    assert all(v["n"] == 2 and 0 < v["psnr"] < 100 for v in report["scales"]["2"]["model"].values())
    assert json.loads((tmp_path / "weights" / "espcn-x2.log.json").read_text())["steps"] == 10
    assert (tmp_path / "weights" / "espcn-x2.safetensors").is_file()
    assert (tmp_path / "weights" / "espcn-x2.toml").read_text() == (run / "config.toml").read_text()


def test_campaign_plot_reads_each_run_and_projects_its_recent_slope(tmp_path):
    """tools/campaign_plot.py: the curves the campaign log shows, and the recent slope (dB per 1k
    steps) the issue's projection of a target's step count is made from."""
    import json
    spec = importlib.util.spec_from_file_location("campaign_plot", ROOT / "tools" / "campaign_plot.py")
    campaign_plot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(campaign_plot)
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": 0, "val_bicubic_psnr": 27.0}] + [{"step": s, "val_psnr": 30 + s / 1e6, "loss": 1}
                                                   for s in range(500, 10001, 500)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    found = campaign_plot.curves(tmp_path)
    assert found["run"]["steps"][-1] == 10000 and found["run"]["bicubic"] == 27.0
    assert campaign_plot.recent_slope(found["run"]) == pytest.approx(0.001)
    assert campaign_plot.recent_slope({"steps": [500, 1000], "psnr": [30, 31]}) is None
    campaign_plot.plot(found, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 0
