"""Review of compression as a user runs it: a study resumed with other ranges, the best config
over the study's database, graphs given as the model, calibration images too small, prune's
progress, and a pruned file read back by a fresh process."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from upsample import cli
from upsample.models import checkpoint, registry

ROOT = Path(__file__).resolve().parents[1]
T91 = ROOT.parent / "shared" / "datasets" / "train" / "T91"
SETS = [f"data.train=[{json.dumps(str(T91))}]", "data.max_images=4", "data.batch_size=4",
        "val.max_images=1", "val.crop=48", "train.steps=6", "val.every=3", "tune.trial_steps=4"]
needs_t91 = pytest.mark.skipif(not T91.is_dir(), reason="needs ../shared/datasets/train/T91")


def _fake_train(cfg, run_dir, **kw):
    """A trial in no time: one validation, its PSNR from the lr drawn."""
    run_dir.mkdir(parents=True, exist_ok=True)
    psnr = 20.0 + cfg.optim.lr + cfg.data.batch_size / 100
    kw["on_validate"](3, psnr)
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 3, "val_psnr": psnr}) + "\n")
    return 0


def _tune(tmp_path, trials, *sets, extra=()):
    args = ["tune", str(ROOT / "configs" / "tiny.toml"), "--trials", str(trials), "--device", "cpu",
            "--storage", f"sqlite:///{tmp_path / 'study.db'}", "--run-dir", str(tmp_path / "runs"), *extra]
    for s in [*SETS, *sets]:
        args += ["--set", s]
    return cli.main(args)


@needs_t91
def test_a_study_resumed_with_other_ranges_is_refused(tmp_path, capsys, monkeypatch):
    """The study searched lr; the same --study with lr off and batch_size searched ran a trial,
    then every call crashed writing best.toml (FixedTrial: 'batch_size' not found)."""
    from upsample.training import loop
    monkeypatch.setattr(loop, "train", _fake_train)
    assert _tune(tmp_path, 1) == 0
    capsys.readouterr()
    assert _tune(tmp_path, 2, "tune.lr=[]", "tune.batch_size=[2, 4]") == 2
    err = capsys.readouterr().err.strip()
    assert "searched lr [0.0001, 0.01]" in err and "batch_size [2, 4]" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs" / "trial-001").exists()
    assert _tune(tmp_path, 2) == 0  # the ranges given back: it continues
    assert "1 trial(s) finished, 1 to run" in capsys.readouterr().err


@needs_t91
def test_a_study_made_before_the_stamp_is_checked_by_its_trials_parameters(tmp_path, capsys, monkeypatch):
    import optuna
    from upsample.training import loop
    monkeypatch.setattr(loop, "train", _fake_train)
    study = optuna.create_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'study.db'}",
                                direction="maximize")
    study.add_trial(optuna.trial.create_trial(
        params={"batch_size": 2}, value=20.0,
        distributions={"batch_size": optuna.distributions.CategoricalDistribution([2, 4])}))
    assert _tune(tmp_path, 2) == 2
    assert "searched batch_size, this call's [tune] ranges are lr" in capsys.readouterr().err


@needs_t91
def test_the_best_config_never_replaces_the_study_database(tmp_path, capsys, monkeypatch):
    from upsample.training import loop
    monkeypatch.setattr(loop, "train", _fake_train)
    assert _tune(tmp_path, 1) == 0
    db = tmp_path / "study.db"
    before = db.read_bytes()
    assert _tune(tmp_path, 1, extra=("-o", str(db), "--overwrite")) == 2
    assert "is the study's database" in capsys.readouterr().err
    assert db.read_bytes() == before


@pytest.mark.parametrize("command", ["prune", "quantize"])
def test_an_onnx_graph_as_the_model_is_named_as_one(tmp_path, capsys, command):
    graph = tmp_path / "m.onnx"
    graph.write_bytes(b"\x08\x07")  # what the loader called "not a checkpoint"
    args = {"prune": ["prune", str(graph), "-o", str(tmp_path / "p.safetensors")],
            "quantize": ["quantize", str(graph), "--backend", "onnxruntime", "--calib", str(tmp_path),
                         "-o", str(tmp_path / "q.onnx")]}[command]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "is an ONNX / OpenVINO graph" in err and "checkpoint" in err and len(err.splitlines()) == 1


def test_calibration_says_how_many_images_were_too_small(tmp_path, capsys):
    from upsample.runtime.quantize import calibration_inputs
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(tmp_path / "small.png")
    Image.fromarray(rng.integers(0, 255, (140, 150), dtype=np.uint8)).save(tmp_path / "gray.png")
    inputs = calibration_inputs(registry.create_model("espcn-x2").eval(), 2, str(tmp_path), size=64)
    assert len(inputs) == 1 and inputs[0].shape == (1, 1, 64, 64)
    assert "skipped 1 image(s)" in capsys.readouterr().err
    from upsample.errors import UserError
    with pytest.raises(UserError, match=r"^--calib not a folder: .*give a folder of training images"):
        calibration_inputs(registry.create_model("espcn-x2").eval(), 2, str(tmp_path / "gray.png"))


def test_prune_shows_the_ratio_search_progress(capsys, monkeypatch):
    """vdsr's search took 25-70 s and vapsr's 106 s with no output."""
    from upsample.media import progress
    from upsample.training.prune import prune_model
    monkeypatch.setattr(progress, "LINE_INTERVAL", 0.0)
    prune_model(registry.create_model("espcn-x2").eval(), 0.5)
    assert "prune: searching the filter ratio 12/12" in capsys.readouterr().err


def test_a_pruned_file_is_read_back_by_a_fresh_process(tmp_path, capsys):
    """Only the file: the architecture, its widths and parameter count, and the same outputs."""
    torch.manual_seed(0)
    src, out = tmp_path / "a.safetensors", tmp_path / "p.safetensors"
    checkpoint.save_checkpoint(registry.create_model("espcn-x3"), src)
    assert cli.main(["prune", str(src), "--filter-ratio", "0.5", "-o", str(out)]) == 0
    reported = capsys.readouterr().out.split("params ")[1].split(" -> ")[1].split(" ")[0]
    code = ("import sys, torch; from upsample.models import checkpoint\n"
            "m, meta = checkpoint.load_checkpoint(sys.argv[1]); torch.manual_seed(1)\n"
            "y = m.eval()(torch.rand(1, 1, 9, 9)).detach()\n"
            "print(meta['arch'], meta['kwargs']['num_feat'], meta['kwargs']['mid_feat'], "
            "sum(p.numel() for p in m.parameters()), 'x'.join(map(str, y.shape)), float(y.sum()))")
    got = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, check=True)
    arch, feat, mid, params, shape, total = got.stdout.split()
    assert (arch, feat, mid, shape) == ("espcn", "32", "16", "1x1x27x27") and f"{int(params):,}" == reported
    model, _ = checkpoint.load_checkpoint(out)
    torch.manual_seed(1)
    assert abs(float(model.eval()(torch.rand(1, 1, 9, 9)).detach().sum()) - float(total)) < 1e-3


def test_pruning_keeps_what_the_removed_channels_carried_on_average(monkeypatch):
    """A removed channel's mean (a tanh's offset) went with it: pruned shipped ESPCN scored 7.9 dB
    on Set5. Each reader's bias now takes it: the output keeps the parent's level."""
    from upsample.training import prune
    torch.manual_seed(0)
    parent = registry.create_model("espcn-x2").eval()
    with torch.no_grad():
        parent.first_part[0].bias.fill_(0.8)  # every first-layer filter carries an offset
        parent.first_part[2].bias.fill_(0.5)
    x = prune.image_like(1)

    def level_after(compensate) -> float:
        monkeypatch.setattr(prune, "compensate", compensate)
        model = prune.prune_model(copy.deepcopy(parent), None, filter_ratio=0.5)
        with torch.no_grad():
            return float(model(x).mean())
    with torch.no_grad():
        want = float(parent(x).mean())
    kept = level_after(prune.compensate)
    dropped = level_after(lambda group, means: None)
    assert abs(kept - want) < 0.2 * abs(dropped - want)


def test_prune_leaves_a_file_named_like_its_temporary_alone(tmp_path):
    """The pruned file was written to OUT.part, then that name deleted: a user's file too."""
    torch.manual_seed(0)
    src, out = tmp_path / "a.safetensors", tmp_path / "p.safetensors"
    checkpoint.save_checkpoint(registry.create_model("espcn-x2"), src)
    mine = tmp_path / "p.safetensors.part"
    mine.write_text("my notes")
    assert cli.main(["prune", str(src), "--filter-ratio", "0.5", "-o", str(out)]) == 0
    assert mine.read_text() == "my notes" and out.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "p.safetensors", "p.safetensors.part"]
