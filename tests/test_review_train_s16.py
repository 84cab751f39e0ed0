"""Review of `upsample train` as a researcher runs it: an empty recipe with a --set, a choice
spelled in Python's or another case, a mistyped shipped model's name as the recipe."""

import pytest

from upsample import cli
from upsample.errors import UserError
from upsample.training import config as config_mod


def test_an_empty_recipe_with_a_set_of_steps_is_refused(tmp_path):
    """A truncated recipe plus `--set train.steps=2` trained espcn-x2 on the default data, exit 0."""
    recipe = tmp_path / "r.toml"
    recipe.write_text("# only a comment\n")
    with pytest.raises(UserError, match="is empty"):
        config_mod.load_config(recipe, ["train.steps=2"])
    with pytest.raises(UserError, match="is empty"):
        config_mod.load_config(recipe, ["model=1"])
    cfg = config_mod.load_config(recipe, ["model.name=espcn-x3"])  # a --set that says what to train
    assert cfg.model.name == "espcn-x3"


@pytest.mark.parametrize("setting, hint", [
    ("train.channels_last=True", "channels_last = true: lowercase, no quotes"),
    ("train.compile=FALSE", "compile = false: lowercase, no quotes"),
    ("train.amp=BF16", 'amp = "bf16": lowercase'),
])
def test_a_choice_in_another_spelling_says_how_to_write_it(setting, hint):
    """It said "must be one of True, False, auto; got 'True'" to a user who had typed True."""
    with pytest.raises(UserError) as exc:
        config_mod.config_from_dict({}, [setting])
    assert hint in str(exc.value)
    assert "True" not in str(exc.value).split(";")[0]


def test_an_unknown_choice_has_no_spelling_hint():
    with pytest.raises(UserError) as exc:
        config_mod.config_from_dict({}, ["data.pipeline=gpu"])
    assert str(exc.value).endswith("got 'gpu'")


def test_a_mistyped_model_name_as_the_recipe_names_the_close_ones(tmp_path, monkeypatch, capsys):
    """`upsample train espcn-x33` said "config file not found: espcn-x33"."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "espcn-x33"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "did you mean espcn-x3" in err and "recipe file" in err
    assert cli.main(["train", "nope.toml"]) == 2  # a file name is still a missing file
    assert "config file not found: nope.toml" in capsys.readouterr().err
    assert cli.main(["train", "nope.toml", "--init", "espcn-x22"]) == 2
    err = capsys.readouterr().err
    assert "did you mean espcn-x2" in err and "(or a checkpoint file)" in err


def test_a_resumed_run_whose_config_toml_does_not_load_names_it(tmp_path):
    """A hand-edited config.toml of the run said only "unknown key 'train.bogus'", as if the recipe
    or a --set were wrong."""
    from upsample.training import recipe
    run = tmp_path / "run"
    run.mkdir()
    (run / "last_state.pt").write_bytes(b"")
    (run / "config.toml").write_text("[train]\nbogus = 1\n")
    with pytest.raises(UserError, match=r"--resume: the run's .*config.toml does not load .*--reset"):
        recipe.resolve_config("configs/tiny.toml", [], run_dir=run, resume=True, init=None)
    (run / "config.toml").write_text(config_mod.to_toml(config_mod.Config()))
    with pytest.raises(UserError, match="unknown key 'train.bogus'") as exc:  # a --set's own mistake
        recipe.resolve_config("configs/tiny.toml", ["train.bogus=1"], run_dir=run, resume=True, init=None)
    assert "the run's" not in str(exc.value)


def test_a_stopped_run_resumed_with_fewer_steps_is_not_called_finished(tmp_path):
    """`--resume --set train.steps=20` of a run stopped at 105 said "is finished (steps at step
    105/20)": it never finished, and had no final validation."""
    from upsample.training.loop import finished_note, is_finished

    cfg = config_mod.Config()
    cfg.train.steps = 20
    stopped = {"step": 105, "finished": None, "best_step": 100, "best_psnr": 30.0, "bad_vals": 0}
    assert is_finished(stopped, cfg)
    note = finished_note(stopped, cfg, tmp_path)
    assert "stopped at step 105, past train.steps 20" in note and "above 105" in note
    done = dict(stopped, step=20, finished="steps")
    assert "is finished (steps at step 20/20" in finished_note(done, cfg, tmp_path)


def test_a_patch_too_big_alone_names_the_patch_size(monkeypatch):
    """`--set data.patch_size=100000` said "use data.batch_size <= 1", where one patch alone
    needed 1930 GB: no batch size helps."""
    import torch

    from upsample.models import registry
    from upsample.training import fits

    net = registry.create_model("vdsr", num_layers=3)
    per_patch = fits.saved_bytes_per_patch(net, (1, 10, 10))
    monkeypatch.setattr(fits, "free_memory", lambda device: per_patch // 2)
    with pytest.raises(UserError, match="one patch of data.patch_size .* lower data.patch_size"):
        fits.check_batch_fits([(net, (1, 10, 10))], 4, 1, torch.device("cpu"), half=False)
    monkeypatch.setattr(fits, "free_memory", lambda device: per_patch * 3)
    with pytest.raises(UserError, match=r"data.batch_size <= 1 "):  # one fits: the batch is what to lower
        fits.check_batch_fits([(net, (1, 10, 10))], 4, 1, torch.device("cpu"), half=False)
