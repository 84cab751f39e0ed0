"""Datasets laid out as other projects ship them: LR files beside the HR (DIV2K/EDSR `HR/` +
`LR_bicubic/X2/0001x2.png`, BasicSR `GTmod12/` + `LRbicx2/`, the SelfExSR release's
`img_001_SRF_2_HR.png` beside `_LR`, `_bicubic`), non-image files, broken links: eval measures
the HR images only (never an LR file as HR), the data tools and training leave the LR out with a
note, and each says what it passed over."""

import json
import os

import numpy as np
from PIL import Image

from upsample import cli
from upsample.data import prepare as prep, sources
from upsample.evaluation import evaluate


def _img(path, h=48, w=40, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def _pair(hr_path, lr_path, seed):
    """An HR image and its 2x smaller LR."""
    _img(hr_path, 48, 40, seed)
    Image.open(hr_path).resize((20, 24), Image.BICUBIC).save(_img(lr_path, 1, 1).as_posix())


def _eval(capsys, folder):
    assert cli.main(["eval", "--model", "bicubic", "--scale", "2", "--data", str(folder), "--json", "-",
                     "--per-image"]) == 0
    out = capsys.readouterr()
    return next(iter(json.loads(out.out)["datasets"].values())), out.err


def test_eval_leaves_out_lr_files_beside_the_hr(tmp_path, capsys):
    hr_only = tmp_path / "hr"
    for i in range(3):
        _img(hr_only / f"{i:04d}.png", seed=i)
    want, _ = _eval(capsys, hr_only)
    for layout, lr_name in (("div2k", "LR_bicubic/X2/{i:04d}x2.png"), ("basicsr", "LRbicx2/{i:04d}.png")):
        root = tmp_path / layout
        for i in range(3):
            hr = root / ("HR" if layout == "div2k" else "GTmod12") / f"{i:04d}.png"
            _pair(hr, root / lr_name.format(i=i), i)
        got, err = _eval(capsys, root)
        assert got["n"] == 3 and abs(got["psnr"] - want["psnr"]) < 1e-9, layout
        assert "leaving out 3 LR files" in err and "takes no LR files" in err


def test_eval_of_the_srf_release_measures_only_the_hr(tmp_path, capsys):
    root = tmp_path / "image_SRF_2"
    for i in range(1, 3):
        _pair(root / f"img_{i:03d}_SRF_2_HR.png", root / f"img_{i:03d}_SRF_2_LR.png", i)
        _img(root / f"img_{i:03d}_SRF_2_bicubic.png", seed=10 + i)  # a method's result, HR-sized
        _pair(root / f"baby{i}_HR.png", root / f"baby{i}_LR.png", 20 + i)
    got, err = _eval(capsys, root)
    assert sorted(r["image"] for r in got["images"]) == [
        "baby1_HR.png", "baby2_HR.png", "img_001_SRF_2_HR.png", "img_002_SRF_2_HR.png"]
    assert "leaving out 6 LR files" in err


def test_eval_refuses_a_folder_of_lr_images_and_a_file(tmp_path, capsys):
    """A folder its name and its files' names both mark as LR is refused; either alone (a user's
    "LR" folder of Lightroom exports, photos named *_lr) is measured, with a note."""
    for i in range(2):
        _img(tmp_path / "LR_bicubic" / "X2" / f"{i:04d}x2.png", seed=i)
        _img(tmp_path / "copied" / f"{i:04d}x2.png", seed=i)       # DIV2K LR names, no HR
        _img(tmp_path / "LR" / f"IMG_{i:04d}.png", seed=i)         # Lightroom's exports
    for folder in ("LR_bicubic/X2", "copied/0000x2.png"):
        assert cli.main(["eval", "--model", "bicubic", "--scale", "2", "--data", str(tmp_path / folder)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        assert ("folder of LR images" in err) if folder != "copied/0000x2.png" else ("folders of HR images" in err)
    for folder in ("copied", "LR"):
        got, err = _eval(capsys, tmp_path / folder)
        assert got["n"] == 2 and "named as LR images" in err and "measured as HR" in err


def test_names_that_only_look_like_lr_copies_are_kept(tmp_path):
    """A name is no proof: photo_lrg (larger), icon_x3 (larger), cat_lr (the same size), team_sales
    beside team_hr, and images of a folder named LR with no smaller copy of an image outside it."""
    _img(tmp_path / "photo.png", 24, 20)
    _img(tmp_path / "photo_lrg.png", 48, 40)
    _img(tmp_path / "icon.png", 16, 16)
    _img(tmp_path / "icon_x3.png", 48, 48)
    _img(tmp_path / "cat.png")
    _img(tmp_path / "cat_lr.png")
    _img(tmp_path / "team_hr.png")
    _img(tmp_path / "team_sales.png", 24, 20)
    _img(tmp_path / "LR" / "beach.png", 24, 20)
    _img(tmp_path / "raw" / "beach2.png")
    images = sorted(p for p in tmp_path.rglob("*.png"))
    assert prep.lr_files(tmp_path, images) == {}
    _pair(tmp_path / "dog.png", tmp_path / "dog_LR.png", 3)   # the real thing: 2 times smaller
    images = sorted(p for p in tmp_path.rglob("*.png"))
    assert list(prep.lr_files(tmp_path, images)) == [tmp_path / "dog_LR.png"]


def test_eval_names_an_image_in_two_sub_folders(tmp_path, capsys):
    _img(tmp_path / "Set5" / "GTmod12" / "baby.png")
    _img(tmp_path / "Set5" / "original" / "baby.png")
    got, err = _eval(capsys, tmp_path / "Set5")
    assert got["n"] == 2 and "more than one sub-folder" in err


def test_lr_files_keeps_plain_hr_names(tmp_path):
    names = ["lenna.png", "4x4.png", "flower_lr_scan.png", "img_001.png", "photo-hr.png", "sky.png"]
    images = [_img(tmp_path / n) for n in names]
    assert prep.lr_files(tmp_path, images) == {}
    assert prep.lr_folder_name(tmp_path / "lr_experiments") is None
    assert prep.lr_folder_name(tmp_path / "DIV2K_train_LR_bicubic" / "X4") == "DIV2K_train_LR_bicubic"


def test_training_sources_leave_out_lr_and_note_other_files(tmp_path, capsys):
    root = tmp_path / "DIV2K"
    for i in range(3):
        _pair(root / "DIV2K_train_HR" / f"{i:04d}.png", root / "DIV2K_train_LR_bicubic" / "X2" / f"{i:04d}x2.png", i)
    (root / "Thumbs.db").write_bytes(b"\0" * 8)
    got = [f.name for f, _ in sources.collect_sources([str(root)], progress=True)]
    assert got == ["0000.png", "0001.png", "0002.png"]
    err = capsys.readouterr().err
    assert "leaving out 3 LR files" in err and "Thumbs.db" in err


def test_data_tools_on_a_div2k_style_folder(tmp_path, capsys):
    root = tmp_path / "DIV2K"
    for i in range(2):
        _pair(root / "HR" / f"{i:04d}.png", root / "LR_bicubic" / "X2" / f"{i:04d}x2.png", i)
    (root / "README.txt").write_text("hi")
    os.symlink(tmp_path / "gone.png", root / "HR" / "9999.png")
    assert cli.main(["data", "prepare", str(root), "-o", str(tmp_path / "crops"), "--size", "16"]) == 0
    assert not any("x2" in p.name for p in (tmp_path / "crops").iterdir())
    err = capsys.readouterr().err
    assert "1 file of" in err and "9999.png (a broken link)" in err and "README" not in err
    assert cli.main(["data", "split", str(root), "--val", "0.5", "-o", str(tmp_path / "lists")]) == 0
    listed = (tmp_path / "lists" / "train.txt").read_text() + (tmp_path / "lists" / "val.txt").read_text()
    assert "x2" not in listed and listed.count(".png") == 2
    capsys.readouterr()
    assert cli.main(["data", "check", str(root), "--min-size", "8"]) == 1
    out, err = capsys.readouterr()
    assert ": lr" not in out and "9999.png: unreadable: a broken link" in out
    assert "data check: leaving out 2 LR files" in err  # a note, not a problem clean would move


def test_hr_images_reports_notes_not_silence(tmp_path):
    _img(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("x")
    hr, notes = evaluate.hr_images(str(tmp_path))
    assert [p.name for p in hr] == ["a.png"] and any("notes.txt" in n for n in notes)


def test_a_file_name_that_is_not_utf8_goes_through_prepare_split_lists_and_the_store(tmp_path, capsys):
    """`data prepare` (its record of done files) and `data split` (the hash of each name) ended
    in a UnicodeEncodeError traceback on a name in Latin-1 bytes, as old archives hold."""
    from upsample.data import pairs, store
    folder = tmp_path / "imgs"
    odd = _img(folder / os.fsdecode(b"caf\xe9.png"), 64, 64, 1)
    for i in range(3):
        _img(folder / f"plain{i}.png", 64, 64, i + 2)
    for _ in range(2):  # the second run reads the record of done files back
        assert cli.main(["data", "prepare", str(folder), "-o", str(tmp_path / "crops"), "--size", "32"]) == 0
    crops = sorted(os.fsencode(p.name) for p in (tmp_path / "crops").iterdir() if p.suffix == ".png")
    assert len(crops) == 16 and b"imgs__caf\xe9_s000.png" in crops
    assert cli.main(["data", "split", str(folder), "--val", "0.25"]) == 0
    listed = pairs.read_file_list(folder / "train.txt") + pairs.read_file_list(folder / "val.txt")
    assert odd in listed and all(p.is_file() for p in listed)
    opened, _ = store.open_store(listed, tmp_path / "store")
    assert opened.image(listed.index(odd)).shape == (64, 64, 3)
