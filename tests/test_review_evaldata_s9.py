"""Review s9, eval and data tools on datasets as they are distributed: a 16-bit RGB HR measured
at MATLAB's 8 bits, LR folders given as --data or made from the whole HR, animations and empty
files in `data check` / `prepare`, and the quarantine log that undoes `data clean` from anywhere."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

from upsample import cli
from upsample.data.bicubic import imresize_array
from upsample.media.imageio import Planes, save_planes


def _rgb(path: Path, h=48, w=40, seed=0) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


def _eval_json(capsys, *args) -> dict:
    assert cli.main(["eval", "--model", "bicubic", "--json", "-", "--per-image", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_a_16bit_rgb_hr_is_taken_to_8_bits_as_matlab_im2uint8(tmp_path, capsys):
    """Pillow reads a 16-bit RGB PNG by its high bytes (v >> 8); MATLAB's imread + im2uint8 and the
    README say round(v / 257): the two differ by a level wherever the low byte is large."""
    deep = np.random.default_rng(1).integers(0, 65536, (48, 40, 3)).astype(np.uint16)
    (tmp_path / "deep").mkdir()
    save_planes(Planes(deep), tmp_path / "deep" / "x.png")
    eight = np.round(deep / 257.0).astype(np.uint8)
    assert (eight != (deep >> 8)).mean() > 0.2  # the two readings are apart
    (tmp_path / "eight").mkdir()
    Image.fromarray(eight).save(tmp_path / "eight" / "x.png")
    rep = _eval_json(capsys, "--scale", "2", "--data", str(tmp_path / "deep"), str(tmp_path / "eight"))
    a, b = (rep["datasets"][k]["images"][0] for k in ("deep", "eight"))
    assert a["psnr"] == b["psnr"] and a["ssim"] == b["ssim"]


def test_an_lr_folder_given_as_data_points_to_lr(tmp_path, capsys):
    for i in range(2):
        _rgb(tmp_path / "DIV2K_valid_LR_bicubic" / "X2" / f"{801 + i:04d}x2.png", seed=i)
    lr = tmp_path / "DIV2K_valid_LR_bicubic" / "X2"
    assert cli.main(["eval", "--model", "bicubic", "--scale", "2", "--data", str(lr)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "folder of LR images" in err
    assert f"--lr {lr}" in err and "takes no LR files" not in err


def test_an_lr_made_from_the_whole_hr_says_so(tmp_path, capsys):
    """DIV2K-style LR of an HR whose sides are no multiple of 3: imresize gives ceil(side / 3)
    pixels, one more than the modcropped HR's LR; the error says what the file is."""
    hr = _rgb(tmp_path / "HR" / "0801.png", 50, 47)
    lr = imresize_array(hr.transpose(2, 0, 1).astype(np.float64), 1 / 3)
    lr = np.clip(np.round(lr), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    assert lr.shape[:2] == (17, 16)
    (tmp_path / "X3").mkdir()
    Image.fromarray(lr).save(tmp_path / "X3" / "0801x3.png")
    assert cli.main(["eval", "--model", "bicubic", "--scale", "3", "--data", str(tmp_path / "HR"),
                     "--lr", str(tmp_path / "X3")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "made from the whole HR" in err and "0801x3.png" in err


def _animation(path: Path) -> None:
    frames = [Image.fromarray(np.full((120, 120, 3), 40 * i, np.uint8)) for i in range(3)]
    frames[0].save(path, save_all=True, append_images=frames[1:])


def test_check_reports_an_animation_and_an_empty_file(tmp_path, capsys):
    """Training reads one picture a file and stops on an animated GIF: `check` passed it as fine."""
    root = tmp_path / "imgs"
    _rgb(root / "good.png", 120, 120)
    _animation(root / "anim.gif")
    (root / "zero.png").write_bytes(b"")
    assert cli.main(["data", "check", str(root)]) == 1
    out = capsys.readouterr().out.splitlines()
    found = {Path(line.split(": ")[0]).name: line for line in out[:-1]}
    assert set(found) == {"anim.gif", "zero.png"}
    assert "anim.gif: unreadable: an animation of 3 frames" in found["anim.gif"]
    assert "zero.png: unreadable: the file is empty (0 bytes)" in found["zero.png"]
    assert str(root / "zero.png") not in found["zero.png"].split(": ", 1)[1]  # the path once
    assert out[-1].startswith("3 images, 2 with problems (2 unreadable)")


def test_prepare_skips_an_animation_saying_what_prepare_takes(tmp_path, capsys):
    _rgb(tmp_path / "src" / "good.png", 64, 64)
    _animation(tmp_path / "src" / "anim.gif")
    assert cli.main(["data", "prepare", str(tmp_path / "src"), "-o", str(tmp_path / "out"), "--size", "32"]) == 0
    err = capsys.readouterr().err
    assert "anim.gif is an animation of 3 frames: data prepare cuts single pictures" in err
    assert "upsample image" not in err and len(list((tmp_path / "out").glob("*.png"))) == 4


def test_the_quarantine_log_undoes_clean_from_any_folder(tmp_path, capsys, monkeypatch):
    """Relative paths in QUARANTINE.tsv named files relative to wherever clean ran; a file of the
    same name already in the quarantine is kept, the newcomer takes another name."""
    monkeypatch.chdir(tmp_path)
    _rgb(tmp_path / "imgs" / "good.png", 120, 120)
    small = _rgb(tmp_path / "imgs" / "small.png", 20, 20, seed=3)
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "small.png").write_bytes(b"kept")
    assert cli.main(["data", "clean", "imgs", "--quarantine", "q"]) == 0
    capsys.readouterr()
    assert (tmp_path / "q" / "small.png").read_bytes() == b"kept"
    src, dst, why = (tmp_path / "q" / "QUARANTINE.tsv").read_text().splitlines()[0].split("\t")
    assert Path(src) == tmp_path / "imgs" / "small.png" and Path(dst) == tmp_path / "q" / "small.1.png"
    assert Path(src).is_absolute() and np.array_equal(np.asarray(Image.open(dst)), small)
    assert why.startswith("too-small")


def test_save_refuses_a_file_where_a_dataset_folder_goes_before_any_work(tmp_path, capsys):
    """--save DIR where DIR/NAME (the dataset's folder) is a file: an OSError "File exists" (exit 1)
    after the first image was evaluated, --overwrite or not."""
    _rgb(tmp_path / "Set1" / "x.png")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "Set1").write_bytes(b"notes")
    for extra in ([], ["--overwrite"]):
        assert cli.main(["eval", "--model", "bicubic", "--scale", "2", "--data", str(tmp_path / "Set1"),
                         "--save", str(tmp_path / "out"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "is a file" in err and "--save" in err
    assert (tmp_path / "out" / "Set1").read_bytes() == b"notes"
