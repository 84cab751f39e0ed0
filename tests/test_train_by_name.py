"""`upsample train NAME`: a shipped model's name trains from the recipe packaged beside its weights
(the resolved config that made them), so an installed package trains without the repository's
configs/; a model without shipped weights, or a fine-tune stage whose start is missing, says
what to give instead."""

import json
import tomllib


from cli_checks import one_error_line
from upsample import cli
from upsample.models import registry
from photos import smooth_photos


def test_a_shipped_name_trains_from_its_packaged_recipe_on_the_users_data(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no configs/ here: as after `pip install upsample`
    smooth_photos(tmp_path / "photos")
    argv = ["train", "espcn-x3", "--set", 'data.train=["photos"]', "--set", "train.steps=2",
            "--set", "val.every=2", "--set", "data.batch_size=2", "--set", "data.val_fraction=0.2"]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "the recipe that trained the shipped espcn-x3" in err
    saved = tomllib.loads((tmp_path / "runs" / "espcn-x3" / "config.toml").read_text())
    packaged = tomllib.loads(registry.shipped_recipe("espcn-x3").read_text())
    assert saved["data"]["train"] == ["photos"] and saved["train"]["steps"] == 2
    for section, key in [("data", "patch_size"), ("optim", "lr"), ("loss", "name"), ("sched", "eta_min")]:
        assert saved[section][key] == packaged[section][key]
    steps = [json.loads(line) for line in (tmp_path / "runs" / "espcn-x3" / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("step") == 2 for r in steps)
    # how a step computes is this machine's: timed here (the packaged recipe: bf16, as on the CPU
    # that trained it); its one thread stays
    assert packaged["train"]["amp"] == "bf16" and packaged["train"]["threads"] == 1
    assert {k: saved["train"][k] for k in ("amp", "channels_last", "compile", "threads")} == \
        {"amp": "auto", "channels_last": "auto", "compile": "auto", "threads": 1}


def test_a_set_of_a_machine_setting_wins_over_this_machines_own(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    smooth_photos(tmp_path / "photos")
    argv = ["train", "espcn-x3", "--set", 'data.train=["photos"]', "--set", "train.steps=1", "--set", "val.every=0",
            "--set", "data.batch_size=2", "--set", "train.amp=none", "--set", "train.threads=2"]
    assert cli.main(argv) == 0
    saved = tomllib.loads((tmp_path / "runs" / "espcn-x3" / "config.toml").read_text())["train"]
    assert (saved["amp"], saved["threads"], saved["channels_last"]) == ("none", 2, "auto")


def test_a_file_of_that_name_is_the_recipe(tmp_path, monkeypatch, capsys):
    """A recipe file the user named like a model is read, not the packaged one."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "espcn-x3").write_text("[model]\nname = \"espcn-x3\"\n[data]\ntrain = [\"nowhere\"]\n")
    assert cli.main(["train", "espcn-x3"]) == 2
    one_error_line(capsys, "data.train: folder not found: nowhere")


def test_a_model_without_shipped_weights_says_what_recipe_to_give(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "vapsr-x2"]) == 2
    one_error_line(capsys, "vapsr-x2 has no shipped weights", '[model] name = "vapsr-x2"', "configs/")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "vapsr-x2.toml").write_text("[model]\nname = \"vapsr-x2\"\n")
    assert cli.main(["train", "vapsr-x2"]) == 2
    one_error_line(capsys, "e.g. configs/vapsr-x2.toml")
    assert not (tmp_path / "runs").exists()


def test_a_fine_tune_stage_whose_start_is_missing_offers_the_shipped_weights(tmp_path, monkeypatch, capsys):
    """The packaged vdsr recipe is its last fine-tune stage: it starts from runs/vdsr-ft/."""
    monkeypatch.chdir(tmp_path)
    smooth_photos(tmp_path / "photos")
    assert cli.main(["train", "vdsr", "--set", 'data.train=["photos"]']) == 2
    err = capsys.readouterr().err
    assert "train.init: runs/vdsr-ft/best.safetensors not found" in err and "--init vdsr" in err
    assert "Traceback" not in err


def test_prune_names_the_shipped_recipe_to_fine_tune_with(tmp_path, capsys):
    out = tmp_path / "p.safetensors"
    assert cli.main(["prune", "espcn-x3", "--sparsity", "0.25", "-o", str(out)]) == 0
    assert f"`upsample train espcn-x3 --init {out}`" in capsys.readouterr().out


def test_a_folder_named_like_the_model_is_no_recipe(tmp_path, monkeypatch, capsys):
    """A folder of that name (the user's photos, say) does not hide the packaged recipe."""
    from upsample.training.recipe import recipe_file
    monkeypatch.chdir(tmp_path)
    (tmp_path / "espcn-x3").mkdir()
    assert recipe_file("espcn-x3") == str(registry.shipped_recipe("espcn-x3"))
    assert recipe_file("photos.toml") == "photos.toml"  # a missing file: loading says so


def test_the_packaged_recipes_missing_images_say_how_to_give_yours(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # its data.train, ../shared/datasets/..., is not there
    assert cli.main(["train", "espcn-x3"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("upsample train: error: data.train: ") and "--set 'data.train=" in err[-1]
    assert not (tmp_path / "runs").exists()
