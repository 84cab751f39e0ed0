"""Review of `upsample train` as a user runs it on their own folder and recipe: `~` in recipe
paths, --init with a shipped model's name, the note on resuming after the recipe was edited, a
validation split that holds nothing out."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from upsample import cli
from upsample.errors import UserError
from upsample.models import registry
from upsample.training import config as config_mod
from upsample.training.recipe import resolve_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.toml"


def _recipe(path: Path, **sets) -> Path:
    """A copy of the tiny recipe with `section__key=TOML` values replaced, as a user edits it."""
    table = config_mod.read_toml(TINY)
    for dotted, value in sets.items():
        section, key = dotted.split("__")
        table[section][key] = value
    cfg = config_mod.config_from_dict(table)
    path.write_text(config_mod.to_toml(cfg))
    return path


def test_home_in_recipe_paths_is_expanded():
    cfg = config_mod.config_from_dict({"data": {"train": ["~/photos", "rel/dir"], "val_list": "~/val.txt"}},
                                      ["train.init=~/w.safetensors"])
    home = os.path.expanduser("~")
    assert cfg.data.train == [f"{home}/photos", "rel/dir"]
    assert cfg.data.val_list == f"{home}/val.txt"
    assert cfg.train.init == f"{home}/w.safetensors"


def test_a_bare_folder_for_a_list_key_says_how_to_write_it():
    with pytest.raises(UserError, match=r'e\.g\. \["/tmp/photos"\]'):
        config_mod.config_from_dict({}, ["data.train=/tmp/photos"])


@pytest.mark.skipif(registry.weights_path("espcn-x2") is None, reason="needs the shipped espcn-x2")
def test_init_takes_a_shipped_models_name(tmp_path):
    recipe = _recipe(tmp_path / "my.toml")
    cfg, text = resolve_config(str(recipe), [], run_dir=tmp_path / "run", resume=False, init="espcn-x2")
    assert cfg.train.init == str(registry.weights_path("espcn-x2"))
    assert str(registry.weights_path("espcn-x2")) in text  # the run's config.toml records the file
    cfg, _ = resolve_config(str(recipe), ["train.init=espcn-x2"], run_dir=tmp_path / "run", resume=False,
                            init=None)
    assert cfg.train.init == str(registry.weights_path("espcn-x2"))
    with pytest.raises(UserError, match="vapsr-x2: that model has no shipped weights.*espcn-x2"):
        resolve_config(str(recipe), [], run_dir=tmp_path / "run", resume=False, init="vapsr-x2")


def _resumable_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    cfg = config_mod.load_config(_recipe(tmp_path / "first.toml"), ["train.steps=10"])
    (run / "config.toml").write_text(config_mod.to_toml(cfg))
    (run / "last_state.pt").write_bytes(b"")  # resolve_config only asks whether it exists
    return run


def test_resume_after_editing_the_recipe_names_what_differs(tmp_path, capsys, monkeypatch):
    run = _resumable_run(tmp_path)
    edited = _recipe(tmp_path / "my.toml", optim__lr=5e-4, train__steps=40)
    cfg, _ = resolve_config(str(edited), [], run_dir=run, resume=True, init=None)
    assert cfg.optim.lr == 1e-3 and cfg.train.steps == 10  # the run's own config
    err = capsys.readouterr().err
    assert "optim.lr (0.001 in the run, 0.0005 in the recipe)" in err
    assert "train.steps (10 in the run, 40 in the recipe)" in err
    assert "to take the recipe's train.steps, add --set KEY=VALUE" in err and "a resumed run keeps its optim.lr" in err
    # under torchrun every rank resolves the config: the note comes from rank 0 alone
    monkeypatch.setenv("RANK", "1")
    resolve_config(str(edited), [], run_dir=run, resume=True, init=None)
    assert "note" not in capsys.readouterr().err
    monkeypatch.delenv("RANK")
    # the same recipe with the run's --set: nothing to say
    resolve_config(str(_recipe(tmp_path / "same.toml")), ["train.steps=10"], run_dir=run, resume=True, init=None)
    assert "note" not in capsys.readouterr().err


def test_resume_is_not_stopped_by_an_edited_recipe_that_no_longer_loads(tmp_path, capsys):
    run = _resumable_run(tmp_path)
    broken = tmp_path / "my.toml"
    broken.write_text(TINY.read_text().replace("lr = 1e-3", "lrr = 1e-3"))
    cfg, _ = resolve_config(str(broken), [], run_dir=run, resume=True, init=None)
    assert cfg.train.steps == 10
    assert "is not read (config: unknown key 'optim.lrr'" in capsys.readouterr().err


def test_a_validation_split_that_holds_nothing_out_says_so(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(photos / "a.png")
    args = ["train", str(TINY), "--run-dir", str(tmp_path / "run"), "--device", "cpu",
            "--set", f'data.train=["{photos}"]', "--set", "train.steps=2", "--set", "data.batch_size=2"]
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    assert "data.val_fraction 0.05 held out none of the 1 training images: no validation" in err
    assert (tmp_path / "run" / "last.safetensors").is_file()


def test_a_damaged_or_foreign_last_state_is_one_line_not_a_traceback(tmp_path, capsys):
    run = _resumable_run(tmp_path)
    torch.save({"step": 3, "model": {}}, run / "whole.pt")
    for content, why in [(b"", "it is damaged (Ran out of input)"),
                         ((run / "whole.pt").read_bytes()[:200], "it is damaged (PytorchStreamReader"),
                         (None, "is not the training state")]:
        if content is None:
            torch.save([1, 2], run / "last_state.pt")
        else:
            (run / "last_state.pt").write_bytes(content)
        assert cli.main(["train", str(TINY), "--run-dir", str(run), "--resume", "--device", "cpu",
                         "--set", "train.steps=10"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and why in err and "--reset" in err, err


def test_resume_without_the_runs_config_toml_says_so(tmp_path, capsys):
    run = _resumable_run(tmp_path)
    (run / "config.toml").unlink()
    with pytest.raises(UserError, match="holds last_state.pt but not config.toml"):
        resolve_config(str(TINY), [], run_dir=run, resume=True, init=None)


class _GoneReader:
    """A console whose reader has left (`upsample train ... | head`): every write is a broken pipe."""

    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        pass

    def isatty(self):
        return False


def test_a_console_whose_reader_left_does_not_end_the_run_unsaved(tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(photos / "a.png")
    monkeypatch.setattr(sys, "stderr", _GoneReader())
    monkeypatch.setattr(sys, "stdout", _GoneReader())
    args = ["train", str(TINY), "--run-dir", str(tmp_path / "run"), "--device", "cpu", "--set",
            f'data.train=["{photos}"]', "--set", "train.steps=3", "--set", "data.batch_size=2"]
    assert cli.main(args) == 0
    assert torch.load(tmp_path / "run" / "last_state.pt", weights_only=False)["step"] == 3
