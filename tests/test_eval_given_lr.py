"""`upsample eval --lr DIR`: the dataset's own LR inputs, paired with the HR by name. LR written
with the project's MATLAB bicubic gives exactly the numbers of the LR that eval makes itself."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from upsample.cli import main
from upsample.data import bicubic
from upsample.data.colour import to_uint8
from upsample.data.degrade import make_lr, modcrop
from upsample.media.imageio import read_rgb

SET5 = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "benchmark" / "Set5"
pytestmark = pytest.mark.skipif(not SET5.is_dir(), reason="needs ../shared/datasets/benchmark/Set5")
NAMES = ("bird", "head", "woman")  # the three smallest: 288x288, 280x280, 228x344


def matlab_lr(hr_path: Path, scale: int) -> Image.Image:
    """The papers' LR of an HR file: modcrop, MATLAB bicubic down (numpy's, `data.bicubic`),
    rounded to uint8. Its BLAS may round a rare value one level off torch's (the docstring of
    `data.bicubic`: 5 values of baby.png at x2 on one machine); those take eval's own, so that the
    comparison below is exact."""
    hr = modcrop(read_rgb(hr_path), scale)
    lr = bicubic.imresize_array(hr.transpose(2, 0, 1).astype(np.float64) / 255, 1 / scale)
    lr = np.clip(np.round(lr * 255), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    made = to_uint8(make_lr(hr, scale))
    off = lr != made
    assert np.abs(lr.astype(int) - made).max() <= 1 and off.mean() < 1e-3  # the same resize
    return Image.fromarray(np.where(off, made, lr))


def write_set(folder: Path, hr_name="{}", lr_dir: Path | None = None, lr_name="{}", scale=2, lr=matlab_lr):
    """The three Set5 images as HR `hr_name` in `folder`, their LR as `lr_name` in `lr_dir`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        shutil.copy(SET5 / f"{name}.png", folder / f"{hr_name.format(name)}.png")
        if lr_dir is not None:
            lr_dir.mkdir(parents=True, exist_ok=True)
            lr(SET5 / f"{name}.png", scale).save(lr_dir / f"{lr_name.format(name)}.png")


def eval_json(capsys, *argv) -> dict:
    assert main(["eval", *argv, "--json", "-"]) == 0
    return json.loads(capsys.readouterr().out)


def eval_error(capsys, *argv) -> str:
    assert main(["eval", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("upsample eval: error:"), err
    return err[0]


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """{(model, scale): the numbers of plain eval (LR made from the HR)} of the three images."""
    folder = tmp_path_factory.mktemp("plain") / "hr"
    write_set(folder)
    cache = {}

    def numbers(capsys, model="bicubic", scale=2, protocol="papers"):
        key = (model, scale, protocol)
        if key not in cache:
            d = eval_json(capsys, "--model", model, "--scale", str(scale), "--protocol", protocol,
                          "--data", str(folder))
            cache[key] = {k: v for k, v in d["datasets"]["hr"].items()}
        return cache[key]
    return numbers


@pytest.mark.parametrize("hr_name,lr_sub,lr_name", [
    ("{}", "DIV2K_valid_LR_bicubic/X2", "{}x2"),     # DIV2K
    ("{}", "LRbicx2", "{}"),                          # BasicSR: same names in two folders
    ("{}", "lr", "{}_x2"),
    ("{}", "lr", "{}X2"),
    ("{}", "lr", "{}_LR"),
    ("{}_HR", "lr", "{}_LR2"),                        # RealSR
    ("{}_SRF_2_HR", "lr", "{}_SRF_2_LR"),             # SelfExSR
    ("{}", "lr", "{}_SRF_2_LR"),
])
def test_given_lr_gives_the_numbers_of_plain_eval(tmp_path, capsys, plain, hr_name, lr_sub, lr_name):
    write_set(tmp_path / "hr", hr_name, tmp_path / lr_sub, lr_name)
    r = eval_json(capsys, "--scale", "2", "--data", str(tmp_path / "hr"), "--lr", str(tmp_path / lr_sub))
    d = r["datasets"]["hr"]
    ref = plain(capsys)
    assert (d["psnr"], d["ssim"], d["n"]) == (ref["psnr"], ref["ssim"], ref["n"])  # exactly
    assert d["lr"] == f"given from {tmp_path / lr_sub}" and r["degrade"] == "given (--lr)"


def test_a_real_model_runs_on_the_given_lr(tmp_path, capsys, plain):
    """espcn-x3 (shipped weights) on the given x3 LR: its numbers exactly; a wrong LR changes them."""
    write_set(tmp_path / "hr", lr_dir=tmp_path / "lr", lr_name="{}x3", scale=3)
    r = eval_json(capsys, "--model", "espcn-x3", "--data", str(tmp_path / "hr"), "--lr", str(tmp_path / "lr"))
    ref = plain(capsys, "espcn-x3", 3)
    assert (r["datasets"]["hr"]["psnr"], r["datasets"]["hr"]["ssim"]) == (ref["psnr"], ref["ssim"])
    dark = Image.eval(Image.open(tmp_path / "lr" / "birdx3.png"), lambda v: v // 2)
    dark.save(tmp_path / "lr" / "birdx3.png")
    r = eval_json(capsys, "--model", "espcn-x3", "--data", str(tmp_path / "hr"), "--lr", str(tmp_path / "lr"))
    assert r["datasets"]["hr"]["psnr"] < ref["psnr"] - 1  # the given file is what the model saw


def test_catid_protocol_takes_a_given_pillow_lr(tmp_path, capsys, plain):
    def pillow_lr(path, s):
        img = Image.open(path).convert("RGB")
        return img.resize((img.width // s, img.height // s), Image.BICUBIC)
    write_set(tmp_path / "hr", lr_dir=tmp_path / "lr", lr=pillow_lr)
    r = eval_json(capsys, "--scale", "2", "--protocol", "catid", "--data", str(tmp_path / "hr"),
                  "--lr", str(tmp_path / "lr"))
    ref = plain(capsys, protocol="catid")
    for k in ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim"):
        assert r["datasets"]["hr"][k] == ref[k]


def test_the_lr_of_the_scale_is_picked_and_the_report_says_given(tmp_path, capsys, plain):
    """DIV2K's LR_bicubic/ named whole: X2/NAMEx2 and X3/NAMEx3 both fit NAME; the scale picks."""
    write_set(tmp_path / "hr", lr_dir=tmp_path / "LR_bicubic" / "X2", lr_name="{}x2")
    write_set(tmp_path / "hr", lr_dir=tmp_path / "LR_bicubic" / "X3", lr_name="{}x3", scale=3)
    for s in (2, 3):
        r = eval_json(capsys, "--scale", str(s), "--data", str(tmp_path / "hr"), "--lr", str(tmp_path / "LR_bicubic"))
        assert r["datasets"]["hr"]["psnr"] == plain(capsys, scale=s)["psnr"]
    assert main(["eval", "--scale", "2", "--data", str(tmp_path / "hr"), "--lr", str(tmp_path / "LR_bicubic")]) == 0
    out = capsys.readouterr().out
    assert "LR given (--lr)" in out and f"hr: LR given from {tmp_path / 'LR_bicubic'}" in out


def test_lr_beside_the_hr_in_one_folder(tmp_path, capsys, plain):
    """RealSR / SelfExSR keep HR and LR in one folder: --data D --lr D."""
    write_set(tmp_path / "d", "{}_HR", tmp_path / "d", "{}_LR2")
    assert main(["eval", "--scale", "2", "--data", str(tmp_path / "d"), "--lr", str(tmp_path / "d"), "--json", "-"]) == 0
    cap = capsys.readouterr()
    r = json.loads(cap.out)
    assert r["datasets"]["d"]["n"] == 3 and r["datasets"]["d"]["psnr"] == plain(capsys)["psnr"]
    assert "leaving out 3 LR files" in cap.err and "the LR images are those of --lr" in cap.err


def test_missing_lr_names_the_hr_file(tmp_path, capsys):
    write_set(tmp_path / "hr", lr_dir=tmp_path / "lr", lr_name="{}x2")
    (tmp_path / "lr" / "headx2.png").unlink()
    err = eval_error(capsys, "--scale", "2", "--data", str(tmp_path / "hr"), "--lr", str(tmp_path / "lr"))
    assert f"{tmp_path / 'hr' / 'head.png'}: no LR image for it in --lr" in err


def test_mis_sized_lr_names_the_lr_file(tmp_path, capsys):
    write_set(tmp_path / "hr", lr_dir=tmp_path / "lr", lr_name="{}x2")
    matlab_lr(SET5 / "woman.png", 3).save(tmp_path / "lr" / "womanx2.png")  # an x3 LR under an x2 name
    err = eval_error(capsys, "--scale", "2", "--data", str(tmp_path / "hr"), "--lr", str(tmp_path / "lr"))
    assert f"{tmp_path / 'lr' / 'womanx2.png'}: the LR is 76x114" in err and "needs 114x172 at x2" in err


def test_two_fitting_lr_files_are_refused(tmp_path, capsys):
    write_set(tmp_path / "hr", lr_dir=tmp_path / "lr", lr_name="{}x2")
    shutil.copy(tmp_path / "lr" / "birdx2.png", tmp_path / "lr" / "bird_x2.png")
    err = eval_error(capsys, "--scale", "2", "--data", str(tmp_path / "hr"), "--lr", str(tmp_path / "lr"))
    assert "bird.png: several LR images" in err and "birdx2.png" in err and "bird_x2.png" in err


@pytest.mark.parametrize("extra,message", [
    (["--degrade", "gaussian", "--sigma", "1"], "--degrade/--sigma make the LR from the HR, --lr gives it"),
    (["--degrade", "bicubic"], "--degrade/--sigma make the LR from the HR, --lr gives it"),
    (["--lr", "{lr}"], "2 --lr folders for 1 --data folders"),
    (["--save", "{lr}/out"], "would write into the LR folder"),
])
def test_refused_in_one_line(tmp_path, capsys, extra, message):
    write_set(tmp_path / "hr", lr_dir=tmp_path / "lr")
    extra = [e.format(lr=tmp_path / "lr") for e in extra]
    err = eval_error(capsys, "--scale", "2", "--data", str(tmp_path / "hr"), "--lr", str(tmp_path / "lr"), *extra)
    assert message in err


def test_missing_lr_folder_or_a_file(tmp_path, capsys):
    write_set(tmp_path / "hr")
    err = eval_error(capsys, "--scale", "2", "--data", str(tmp_path / "hr"), "--lr", str(tmp_path / "nope"))
    assert f"folder not found: {tmp_path / 'nope'}" in err
    err = eval_error(capsys, "--scale", "2", "--data", str(tmp_path / "hr"), "--lr", str(tmp_path / "hr" / "bird.png"))
    assert "is a file" in err
