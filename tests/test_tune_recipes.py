"""`upsample tune` over a fine-tune recipe starts every trial from the recipe's train.init (it
trained each from scratch), and takes a shipped model's name for its packaged recipe, as
`upsample train NAME` does."""

import json


from cli_checks import one_error_line
from upsample import cli
from upsample.models import registry
from photos import smooth_photos


def _fake_trials(monkeypatch):
    """loop.train replaced: records each trial's config and init, one validation each."""
    from upsample.training import loop
    calls = []

    def fake_train(cfg, run_dir, **kw):
        calls.append((cfg, kw.get("init")))
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 1, "val_psnr": 20.0}) + "\n")
        kw["on_validate"](1, 20.0)
        return 0
    monkeypatch.setattr(loop, "train", fake_train)
    return calls


def _tune(tmp_path, recipe, *sets, data=True):
    args = ["tune", recipe, "--trials", "1", "--device", "cpu", "--storage", f"sqlite:///{tmp_path / 's.db'}",
            "--run-dir", str(tmp_path / "runs")]
    for s in ["data.train=[\"photos\"]"] * data + ["tune.trial_steps=1", "tune.lr=[1e-4, 1e-3]", *sets]:
        args += ["--set", s]
    return cli.main(args)


def test_trials_of_a_fine_tune_recipe_start_from_its_init(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    smooth_photos(tmp_path / "photos")
    calls = _fake_trials(monkeypatch)
    recipe = tmp_path / "ft.toml"
    recipe.write_text('[model]\nname = "espcn-x2"\n[train]\ninit = "start.safetensors"\n')
    assert _tune(tmp_path, str(recipe)) == 2  # its start missing: said before any trial
    one_error_line(capsys, "train.init: start.safetensors not found", "--set train.init=")
    assert calls == []
    assert _tune(tmp_path, str(recipe), "train.init=espcn-x2") == 0  # a shipped model's name: its weights
    (cfg, init), = calls
    assert init == str(registry.weights_path("espcn-x2")) == cfg.train.init


def test_tune_takes_a_shipped_models_name_for_its_packaged_recipe(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no configs/ here: as after `pip install upsample`
    calls = _fake_trials(monkeypatch)
    assert _tune(tmp_path, "espcn-x3", data=False) == 2  # the packaged recipe's own images are not here
    one_error_line(capsys, "the recipe of the shipped espcn-x3 names the images that trained it",
                   "--set 'data.train=[\"DIR\"]'")
    smooth_photos(tmp_path / "photos")
    assert _tune(tmp_path, "espcn-x3") == 0
    (cfg, init), = calls
    assert cfg.model.name == "espcn-x3" and cfg.data.train == ["photos"] and init is None
    assert cfg.train.amp == "auto"  # timed on this machine, not the packaged bf16
    assert "the recipe that trained the shipped espcn-x3" in capsys.readouterr().err
    assert (tmp_path / "runs" / "best.toml").is_file()


def test_a_study_whose_trials_trained_from_scratch_is_not_resumed_from_the_init(monkeypatch):
    """Before trials started from train.init they trained from scratch: a study stamped then is
    refused, its scores not comparable (19.9 dB from scratch against 34.3 fine-tuned)."""
    from upsample.training import config as config_mod, tune
    cfg = config_mod.config_from_dict({"model": {"name": "espcn-x2"}, "train": {"init": "a.safetensors"}})
    setup = tune.trial_setup(cfg)
    assert setup["trials.start_from"] == "train.init"
    assert "trials.start_from" not in tune.trial_setup(config_mod.config_from_dict({"model": {"name": "espcn-x2"}}))
