"""Review of recipes as a user writes them (session 8): did-you-mean for typo'd keys and sections,
numbers in quotes, a patch size that does not fit the scale (refused before the images are
decoded), a single image in data.train, a folder of videos given to `data split` / `check`, and
the small-dataset validation split."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from upsample import cli
from upsample.data import pairs, prepare, sources
from upsample.errors import UserError
from upsample.training import config as config_mod, loop

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.toml")


def _error(table: dict, sets: list[str]) -> str:
    with pytest.raises(UserError) as exc:
        config_mod.config_from_dict(table, sets)
    return str(exc.value)


@pytest.mark.parametrize("table, sets, hint", [
    ({"optim": {"lrr": 1e-3}}, [], "did you mean optim.lr?"),
    ({"optimizer": {"lr": 1e-3}}, [], "did you mean [optim]?"),
    ({"validation": {"every": 5}}, [], "did you mean [val]?"),
    ({}, ["DATA.batch_size=4"], "did you mean [data]?"),
    ({"train": {"batch_size": 4}}, [], "did you mean data.batch_size? (it is in [data])"),
    ({"train": {"lr": 1e-4}}, [], "did you mean optim.lr? (it is in [optim])"),
    ({"batch_size": 4}, [], "did you mean data.batch_size?"),
    ({}, ["optim.learning_rate=1e-4"], "did you mean optim.lr?"),
    ({}, ["data.patchsize=32"], "did you mean data.patch_size?"),
    ({}, ["loss.perceptual.weigth=1"], "did you mean loss.perceptual.weight?"),
])
def test_unknown_keys_suggest_the_key_meant(table, sets, hint):
    message = _error(table, sets)
    assert message.startswith("config: unknown key") and hint in message and "\n" not in message


def test_an_unknown_key_like_no_other_has_no_suggestion():
    assert "did you mean" not in _error({"colour": {"x": 1}}, [])


@pytest.mark.parametrize("table, hint", [
    ({"optim": {"lr": "1e-4"}}, "(write a number without quotes: lr = 1e-4)"),
    ({"optim": {"lr": ".5"}}, "lr = 0.5)"),  # ".5" is no TOML number
    ({"train": {"steps": "1000"}}, "steps = 1000)"),
    ({"train": {"steps": 1e3}}, "(write it as an integer: steps = 1000)"),
    ({"data": {"flip": "True"}}, "(write flip = true: lowercase, no quotes)"),
])
def test_quoted_numbers_say_how_to_write_them(table, hint):
    message = _error(table, [])
    assert "must be" in message and hint in message


def test_a_word_for_a_number_gets_no_hint():
    assert _error({"optim": {"lr": "fast"}}, []).endswith("got str 'fast'")


def test_patience_without_periodic_validation_is_refused():
    message = _error({"val": {"patience": 3, "every": 0}}, [])
    assert "val.patience" in message and "val.every" in message
    config_mod.config_from_dict({"val": {"patience": 3, "every": 10}})


def test_a_yaml_file_or_a_folder_is_named_as_no_recipe(tmp_path):
    (tmp_path / "opt.yml").write_text("model:\n  name: x\n")
    with pytest.raises(UserError, match="YAML file.*recipes are TOML"):
        config_mod.load_config(tmp_path / "opt.yml")
    with pytest.raises(UserError, match="is a folder; give a recipe file"):
        config_mod.load_config(tmp_path)


def test_patch_size_off_the_scale_is_refused_with_the_nearest(monkeypatch):
    with pytest.raises(UserError, match=r"data.patch_size 33 is not a multiple of scale 2.*32 or 34"):
        pairs.check_patch_size(33, [2], pre_upsample=False)
    with pytest.raises(UserError, match=r"scale 2/3.*30 or 36"):
        pairs.check_patch_size(33, [2, 3], pre_upsample=False)
    pairs.check_patch_size(33, [2, 3], pre_upsample=True)  # VDSR's input is HR-sized
    pairs.check_patch_size(36, [2, 3], pre_upsample=False)


def test_patch_size_is_checked_before_the_images_are_read(tmp_path, monkeypatch, capsys):
    def no_reading(*args, **kwargs):
        raise AssertionError("the training images were listed before the patch size was checked")
    monkeypatch.setattr(sources, "training_images", no_reading)
    assert cli.main(["train", TINY, "--run-dir", str(tmp_path / "run"), "--device", "cpu",
                     "--set", "data.patch_size=33"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("upsample train: error: data.patch_size 33") and "\n" not in err


def _images(folder: Path, n: int, side: int = 48) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    return folder


def test_a_single_image_in_data_train_says_what_data_train_takes(tmp_path):
    folder = _images(tmp_path / "imgs", 1)
    with pytest.raises(UserError, match=r"^data.train: .*im0.png is an image file; .*name its folder"):
        sources.collect_sources([str(folder / "im0.png")])
    (tmp_path / "notes.toml").write_text("x = 1\n")
    with pytest.raises(UserError, match="neither a folder, a .txt file list nor a video"):
        sources.collect_sources([str(tmp_path / "notes.toml")])


def test_few_images_note_how_many_validation_holds_out(tmp_path, capsys):
    folder = _images(tmp_path / "two", 2)
    tr, val = sources.training_images([str(folder)], val_fraction=0.05, progress=True)
    assert len(tr) == 1 and len(val) == 1
    err = capsys.readouterr().err
    assert "data.val_fraction 0.05 of 2 images holds out 1" in err and "leaving 1 to train on" in err
    _images(tmp_path / "many", 40)
    sources.training_images([str(tmp_path / "many")], val_fraction=0.05, progress=True)
    assert "holds out" not in capsys.readouterr().err  # 2 of 40: as asked


def _video(path: Path) -> Path:
    with av.open(str(path), "w") as c:
        v = c.add_stream("mpeg4", rate=10)
        v.width, v.height, v.pix_fmt = 32, 32, "yuv420p"
        for i in range(3):
            frame = np.full((32, 32, 3), 40 * i, np.uint8)
            for packet in v.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(packet)
        for packet in v.encode():
            c.mux(packet)
    return path


def test_split_and_check_name_videos_as_videos(tmp_path, capsys):
    folder = tmp_path / "clips"
    folder.mkdir()
    _video(folder / "a.mp4")
    assert cli.main(["data", "split", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "1 video file of" in err and "is left out" in err and "data split works on images" in err
    assert "no image or video" not in err  # it said so of the videos


def test_a_broken_video_is_named_without_ffmpegs_errno(tmp_path):
    (tmp_path / "fake.mp4").write_text("not a video")
    with pytest.raises(UserError) as exc:
        list(prepare.video_frames(tmp_path / "fake.mp4", 1))
    assert "cannot decode video" in str(exc.value) and "Errno" not in str(exc.value)


def test_clean_says_where_the_moved_files_are_listed(tmp_path, capsys):
    folder = _images(tmp_path / "imgs", 2, side=32)
    assert cli.main(["data", "clean", str(folder), "--quarantine", str(tmp_path / "q")]) == 0
    out = capsys.readouterr().out
    assert "moved 2 files" in out and "QUARANTINE.tsv lists where each came from" in out
    assert len((tmp_path / "q" / "QUARANTINE.tsv").read_text().splitlines()) == 2
    assert not list(folder.iterdir())


@pytest.mark.parametrize("sets, example", [
    (["data.train=[two]"], """(e.g. ["two"]; on a command line quote it whole, as --set 'data.train=["two"]')"""),
    (["data.train=[a, b]"], '["a", "b"]'),
    (["data.train=two"], '(e.g. ["two"])'),
    (["model.scales=2"], "(e.g. [2])"),
])
def test_a_list_given_as_one_value_shows_the_list(sets, example):
    message = _error({}, sets)
    assert "must be a list of" in message and example in message
    assert '["[' not in message  # it suggested ["[two]"]


def test_val_list_that_is_no_list_is_named_before_the_images_are_read(tmp_path):
    folder = _images(tmp_path / "imgs", 3)
    with pytest.raises(UserError, match=r"^data.val_list: .*im0.png is no file list"):
        sources.training_images([str(folder)], val_list=str(folder / "im0.png"))  # a ValueError traceback
    (tmp_path / "val.txt").write_text("imgs/im0.png\nimgs/gone.png\n")
    with pytest.raises(UserError, match=r"^data.val_list: 1 file in .*val.txt is missing, e.g. .*gone.png"):
        sources.training_images([str(folder)], val_list=str(tmp_path / "val.txt"))
    with pytest.raises(UserError, match=r"^data.val_list: file list not found"):
        sources.training_images([str(folder)], val_list=str(tmp_path / "nope.txt"))
    (tmp_path / "val.txt").write_text("imgs/im0.png\n")
    tr, val = sources.training_images([str(folder)], val_list=str(tmp_path / "val.txt"))
    assert [p.name for p in val] == ["im0.png"] and len(tr) == 2


def test_patch_advice_suits_a_discriminator_too():
    with pytest.raises(UserError, match=r"scale 3: .*use e.g. 120 or 144 \(and of 8, for the discriminator\)"):
        pairs.check_patch_size(128, [3], pre_upsample=False, also=8)
