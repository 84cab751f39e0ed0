"""Review of compression as a user runs it: prune's output naming the shipped weights, tune's
SIGTERM before a trial's loop, and a study whose first call failed taking new ranges."""

import json
import shutil
from pathlib import Path

import pytest

from upsample import cli
from upsample.models import registry

ROOT = Path(__file__).resolve().parents[1]
SETS = ["data.max_images=4", "data.batch_size=4", "val.max_images=1", "val.crop=48", "train.steps=6",
        "val.every=3", "tune.trial_steps=4", "tune.lr=[1e-3, 1e-2]"]


def test_prune_never_replaces_the_shipped_weights_it_reads(tmp_path, capsys, monkeypatch):
    """`prune espcn-x2 -o <its weights file> --overwrite` replaced the shipped model with the
    pruned one: the input was compared by its name, not by the file it names."""
    shipped = tmp_path / "weights"
    shipped.mkdir()
    shutil.copy(registry.WEIGHTS_DIR / "espcn-x2.safetensors", shipped)
    monkeypatch.setattr(registry, "WEIGHTS_DIR", shipped)
    weights = shipped / "espcn-x2.safetensors"
    before = weights.read_bytes()
    assert cli.main(["prune", "espcn-x2", "-o", str(weights), "--overwrite"]) == 2
    assert "is the input itself" in capsys.readouterr().err
    assert weights.read_bytes() == before


def _tune(tmp_path, *sets):
    args = ["tune", str(ROOT / "configs" / "tiny.toml"), "--trials", "1", "--device", "cpu",
            "--storage", f"sqlite:///{tmp_path / 'study.db'}", "--run-dir", str(tmp_path / "runs")]
    for s in (*SETS, *sets):
        args += ["--set", s]
    return cli.main(args)


def _fake_train(monkeypatch, first):
    """loop.train that raises `first` on its first call, then scores every trial 20 dB."""
    from upsample.training import loop
    calls = []

    def fake_train(cfg, run_dir, **kw):
        calls.append(cfg.optim.lr)
        if len(calls) == 1:
            raise first
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 3, "val_psnr": 20.0}) + "\n")
        return 0
    monkeypatch.setattr(loop, "train", fake_train)
    return calls


def test_sigterm_before_a_trials_loop_is_143_and_the_trial_runs_again(tmp_path, capsys, monkeypatch):
    """SIGTERM while a trial decodes its images (before the loop's handler) said "interrupted"
    and exited 130, as Ctrl-C does."""
    import optuna
    calls = _fake_train(monkeypatch, cli.Terminated())
    assert _tune(tmp_path) == 143
    assert "upsample tune: terminated; run the same command again" in capsys.readouterr().err
    assert _tune(tmp_path) == 0
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
    assert calls[0] == calls[1]


def test_a_study_whose_first_call_failed_takes_new_ranges(tmp_path, capsys, monkeypatch):
    """The first call's trial failed on its input (no trial scored): narrowing the ranges was
    refused as "trials of other ranges are not comparable", with no trial to compare."""
    from upsample.errors import UserError
    calls = _fake_train(monkeypatch, UserError("data.train: folder not found: x"))
    assert _tune(tmp_path) == 2
    capsys.readouterr()
    assert _tune(tmp_path, "tune.lr=[2e-3, 5e-3]") == 0
    assert 2e-3 <= calls[-1] <= 5e-3
    # once a trial scored, the ranges are the study's
    assert _tune(tmp_path, "tune.lr=[1e-3, 1e-2]") == 2
    assert "give the ranges back" in capsys.readouterr().err


def test_a_stopped_trial_outside_new_ranges_is_not_run_again(tmp_path, capsys, monkeypatch):
    """Ctrl-C in the first trial, then new ranges: the stopped trial's values lie outside them."""
    calls = _fake_train(monkeypatch, KeyboardInterrupt())
    assert _tune(tmp_path, "tune.lr=[1e-3, 1.5e-3]", "train.seed=1") == 130
    assert 1e-3 <= calls[0] <= 1.5e-3
    assert _tune(tmp_path, "tune.lr=[5e-3, 1e-2]", "train.seed=1") == 0
    assert 5e-3 <= calls[1] <= 1e-2


def test_a_tune_section_that_searches_nothing_is_one_line(tmp_path, capsys, monkeypatch):
    """With every [tune] range empty each trial trained the same config, and "best" was one of them."""
    calls = _fake_train(monkeypatch, KeyboardInterrupt())
    assert _tune(tmp_path, "tune.lr=[]", "tune.batch_size=[]", "tune.clip=[]", "tune.weight_decay=[]") == 2
    assert "[tune] section searches nothing" in capsys.readouterr().err and not calls


def test_an_unwritable_run_dir_is_named_as_the_run_dir(tmp_path, capsys):
    """`--run-dir` under a file was said as "-o DIR/best.toml", an option not given."""
    (tmp_path / "f").write_text("x")
    args = ["tune", str(ROOT / "configs" / "tiny.toml"), "--trials", "1", "--device", "cpu",
            "--storage", f"sqlite:///{tmp_path / 'study.db'}", "--run-dir", str(tmp_path / "f" / "runs")]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("upsample tune: error: --run-dir ") and "best.toml" not in err


def test_a_trial_running_in_another_process_keeps_the_ranges(tmp_path, capsys, monkeypatch):
    """No trial finished yet, but another process runs one drawn from the stamped ranges."""
    import optuna
    from upsample.errors import UserError
    from upsample.training import config, tune
    cfg = config.load_config(ROOT / "configs" / "tiny.toml", SETS)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = tune.open_study("tiny", storage, 0)
    tune.check_same_space(study, cfg, storage)
    study.ask({"lr": optuna.distributions.FloatDistribution(1e-3, 1e-2, log=True)})  # running elsewhere
    narrow = config.load_config(ROOT / "configs" / "tiny.toml", [*SETS, "tune.lr=[2e-3, 5e-3]"])
    with pytest.raises(UserError, match="give the ranges back"):
        tune.check_same_space(study, narrow, storage)


def test_int8_hints_name_what_the_suggested_command_needs(capsys):
    """`bench --int8 OUT` (the README's words) said only "give --model MODEL"; the hint for a
    VDSR's missing cached int8 model named a `bench` command that then asked for --scale."""
    from upsample.cli import main
    from upsample.errors import UserError
    from upsample.inference.load import load_upscaler

    assert main(["bench", "--int8", "q.onnx"]) == 2
    assert "--int8 q.onnx is timed beside the model it was quantized from" in capsys.readouterr().err
    with pytest.raises(UserError, match=r"bench --model vdsr --scale 3 --calib DIR"):
        load_upscaler("vdsr", scale=3, backend="auto", precision="int8")


def test_tune_with_a_mistyped_shipped_name_names_the_close_ones(capsys):
    """`tune espcn-x33` said "config file not found", as `train espcn-x33` did."""
    assert cli.main(["tune", "espcn-x33", "--trials", "1", "--storage", "sqlite:///unused.db"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'espcn-x33'; did you mean espcn-x3" in err and "(or a recipe file" in err
