"""`upsample tune`: an Optuna study over the tiny recipe, resumable from its storage."""

import json
from pathlib import Path

import pytest

from upsample import cli
from upsample.training import config

ROOT = Path(__file__).resolve().parents[1]
T91 = ROOT.parent / "shared" / "datasets" / "train" / "T91"
pytestmark = pytest.mark.skipif(not T91.is_dir(), reason="needs ../shared/datasets/train/T91")
SETS = [f"data.train=[{json.dumps(str(T91))}]", "data.max_images=4", "data.batch_size=4",
        "val.max_images=1", "val.crop=48", "train.steps=6", "val.every=3", "tune.trial_steps=4",
        "optim.name=sgd", "tune.lr=[1e-3, 1e-1]", "tune.batch_size=[2, 4]", "tune.clip=[0.1, 1.0]"]


def _tune(tmp_path, trials, *extra):
    args = ["tune", str(ROOT / "configs" / "tiny.toml"), "--trials", str(trials), "--device", "cpu",
            "--storage", f"sqlite:///{tmp_path / 'study.db'}", "--run-dir", str(tmp_path / "runs"),
            *extra]
    for s in SETS:
        args += ["--set", s]
    return cli.main(args)


def test_two_trials_then_resume_to_three(tmp_path, capsys):
    assert _tune(tmp_path, 2) == 0
    out = capsys.readouterr()
    assert "0 trial(s) finished, 2 to run" in out.err
    assert out.err.count("trial 0: complete") == 1 and "trial 1:" in out.err
    best = tmp_path / "runs" / "best.toml"
    cfg = config.load_config(best)  # a complete, valid recipe
    first = best.read_text().splitlines()[0]
    assert first.startswith("# best of study 'tiny'")
    assert 1e-3 <= cfg.optim.lr <= 1e-1 and cfg.data.batch_size in (2, 4)
    assert cfg.train.steps == 6  # the recipe's length: trials ran tune.trial_steps (it said 4)
    assert 0.1 <= cfg.optim.clip <= 1.0 and 0.8 <= cfg.optim.momentum <= 0.99
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["STUDY", "best.toml", "trial-000", "trial-001"]

    # the same command with more trials continues the study from its storage
    assert _tune(tmp_path, 3) == 0
    err = capsys.readouterr().err
    assert "2 trial(s) finished, 1 to run" in err and "trial 2:" in err and "trial 0:" not in err
    assert _tune(tmp_path, 3) == 0
    assert "3 trial(s) finished, 0 to run" in capsys.readouterr().err
    # another study into these trial dirs, or the best config over the recipe: refused
    assert _tune(tmp_path, 1, "--study", "other") == 2
    assert "holds the trials of study 'tiny'" in capsys.readouterr().err
    recipe = tmp_path / "r.toml"
    recipe.write_text((ROOT / "configs" / "tiny.toml").read_text())
    assert cli.main(["tune", str(recipe), "--trials", "1", "--storage", f"sqlite:///{tmp_path / 's2.db'}",
                     "--run-dir", str(tmp_path / "runs2"), "-o", str(recipe)]) == 2
    assert "the recipe itself" in capsys.readouterr().err


def test_a_trial_behind_the_median_is_pruned(tmp_path, capsys, monkeypatch):
    import optuna
    # every trial reports the same PSNRs except the third, which is worse at the first check
    from upsample.training import loop as train_mod
    orig = train_mod.train
    calls = []

    def fake_train(cfg, run_dir, **kw):
        calls.append(run_dir)
        bad = len(calls) == 3
        run_dir.mkdir(parents=True, exist_ok=True)
        lines = []
        for step, psnr in ((3, 20.0), (6, 21.0)):
            v = psnr - (5.0 if bad else 0.0)
            lines.append(json.dumps({"step": step, "val_psnr": v}))
            if kw["on_validate"](step, v):
                break
        (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        return 0
    monkeypatch.setattr(train_mod, "train", fake_train)
    assert _tune(tmp_path, 3) == 0
    err = capsys.readouterr().err
    assert "trial 2: pruned at step 3" in err
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert orig is not fake_train


@pytest.mark.parametrize("extra, sets, message", [
    (["--trials", "0"], [], "--trials must be >= 1"),
    ([], ["tune.lr=[1e-2, 1e-4]"], "tune.lr must be"),
    (["--storage", "nosuchdb://x"], [], "--storage nosuchdb://x"),
    ([], ["tune.lr=[1e-6, 1e-3]"], "a trial with lr=1e-06, momentum=0.8, batch_size=2, clip=0.1 would be refused"),
    ([], ["data.val_fraction=0.0"], "tune ranks trials by validation PSNR"),
])
def test_bad_input_is_one_line(tmp_path, capsys, extra, sets, message):
    args = ["tune", str(ROOT / "configs" / "tiny.toml"), "--device", "cpu",
            "--run-dir", str(tmp_path / "runs"), *extra]
    if "--storage" not in extra:
        args += ["--storage", f"sqlite:///{tmp_path / 'study.db'}"]
    for s in [*SETS, *sets]:
        args += ["--set", s]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_a_bad_storage_claims_no_run_dir_and_a_resumed_study_draws_new_values(tmp_path, capsys):
    from upsample.errors import UserError
    from upsample.training import tune
    with pytest.raises(UserError, match="--storage"):
        tune.open_study("s", "bogus://x", 0)
    storage = f"sqlite:///{tmp_path / 't.db'}"
    first = tune.open_study("s", storage, 0)
    first.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    again = tune.open_study("s", storage, 0)  # as a resumed `upsample tune` opens it
    again.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    xs = [t.params["x"] for t in again.trials]
    assert len(xs) == 4 and len(set(xs)) == 4


def _fake_trials(monkeypatch, results):
    """loop.train replaced: call k returns results[k] (an exit status) after one validation."""
    from upsample.training import loop as train_mod
    calls = []

    def fake_train(cfg, run_dir, **kw):
        calls.append(cfg)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 3, "val_psnr": 20.0 + len(calls)}) + "\n")
        kw["on_validate"](3, 20.0 + len(calls))
        return results[len(calls) - 1]
    monkeypatch.setattr(train_mod, "train", fake_train)
    return calls


def test_a_stopped_trial_runs_again_with_its_values(tmp_path, capsys, monkeypatch):
    """Ctrl-C in trial 0, then the same command: trial 1 has trial 0's values (Optuna marked it
    failed and the next call drew new ones, while the message said it would run again)."""
    import optuna
    calls = _fake_trials(monkeypatch, [130, 0, 0])
    assert _tune(tmp_path, 2) == 130
    assert "runs again from its start" in capsys.readouterr().err
    assert _tune(tmp_path, 2) == 0
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'study.db'}")
    states = [t.state.name for t in study.trials]
    assert states == ["FAIL", "COMPLETE", "COMPLETE"] and study.trials[1].params == study.trials[0].params
    assert calls[0].optim.lr == calls[1].optim.lr != calls[2].optim.lr


def test_o_does_not_replace_a_file_it_did_not_write(tmp_path, capsys, monkeypatch):
    _fake_trials(monkeypatch, [0, 0, 0])
    mine = tmp_path / "mine.toml"
    mine.write_text("# my notes\n")
    assert _tune(tmp_path, 1, "-o", str(mine)) == 2
    assert "is not this study's best config; use --overwrite" in capsys.readouterr().err
    assert mine.read_text() == "# my notes\n"
    assert _tune(tmp_path, 1, "-o", str(mine), "--overwrite") == 0
    assert _tune(tmp_path, 2, "-o", str(mine)) == 0  # its own best.toml: replaced as the study goes on
    assert mine.read_text().startswith("# best of study 'tiny' (2 complete trials)")


def test_a_diverging_trial_is_pruned_and_the_study_goes_on(tmp_path, capsys, monkeypatch):
    """A search's lr range may reach divergence: that trial is pruned (the study ended on it)."""
    import optuna
    from upsample.training import loop as train_mod
    calls = []

    def fake_train(cfg, run_dir, **kw):
        calls.append(run_dir)
        if len(calls) == 1:
            raise train_mod.Diverged("training diverged: the weights are not finite (NaN or inf) at step 3; ...")
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 3, "val_psnr": 20.0}) + "\n")
        return 0
    monkeypatch.setattr(train_mod, "train", fake_train)
    assert _tune(tmp_path, 2) == 0
    assert "trial 0: pruned, it diverged" in capsys.readouterr().err
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["PRUNED", "COMPLETE"]


def test_a_study_resumed_with_other_trial_settings_is_refused(tmp_path, capsys):
    # a 600-step trial beside 200-step ones scored best for its length alone; a seed likewise
    assert _tune(tmp_path, 1) == 0
    capsys.readouterr()
    assert _tune(tmp_path, 2, "--set", "train.seed=7") == 2  # (SETS come last: their keys are fixed)
    err = capsys.readouterr().err
    assert "trained its trials otherwise: train.seed (0 in the study, 7 now)" in err and "--study" in err
    assert _tune(tmp_path, 2, "--set", "train.threads=1") == 0  # speed only: the study goes on


def test_a_trials_length_is_part_of_its_setup_and_its_speed_is_not():
    from upsample.training import tune
    recipe = ROOT / "configs" / "espcn-x2.toml"
    short, long_ = (tune.trial_setup(config.load_config(recipe, [f"tune.trial_steps={n}"])) for n in (200, 600))
    assert short["train.steps"] == 200 and long_["train.steps"] == 600
    fast = tune.trial_setup(config.load_config(recipe, ["train.threads=2", "data.workers=2", "optim.lr=0.5"]))
    assert fast == tune.trial_setup(config.load_config(recipe, []))  # speed, and a searched value


def test_a_study_whose_first_call_failed_takes_the_corrected_settings(tmp_path, capsys):
    missing = tmp_path / "missing.txt"  # (SETS come last: a key of theirs would be overridden)
    assert _tune(tmp_path, 1, "--set", f"data.val_list={json.dumps(str(missing))}", "--set", "train.seed=3") != 0
    capsys.readouterr()
    assert _tune(tmp_path, 1) == 0  # no trial scored under the failed settings: nothing to compare
