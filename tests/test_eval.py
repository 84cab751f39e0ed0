"""`upsample eval` reproduces the reference bicubic table and refuses bad input with one line."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from upsample.cli import main

BENCH = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "benchmark"
needs_bench = pytest.mark.skipif(not (BENCH / "Set5").is_dir(), reason="needs ../shared/datasets/benchmark")


def run_json(capsys, *argv):
    assert main(["eval", *argv, "--json", "-"]) == 0
    return json.loads(capsys.readouterr().out)


@needs_bench
@pytest.mark.parametrize("name,psnr,ssim", [("Set5", 33.68, 0.9305), ("B100", 29.56, 0.8436)])
def test_bicubic_x2_matches_reference(capsys, name, psnr, ssim):
    r = run_json(capsys, "--model", "bicubic", "--scale", "2", "--data", str(BENCH / name))
    assert r["model"] == "bicubic" and r["scale"] == 2 and r["y_channel"] and r["crop_border"] == 2
    d = r["datasets"][name]
    assert abs(d["psnr"] - psnr) <= 0.01 and abs(d["ssim"] - ssim) <= 0.0005
    assert d["n"] == {"Set5": 5, "B100": 100}[name]


@needs_bench
def test_non_integer_scale_lies_between(capsys):
    p = {s: run_json(capsys, "--scale", s, "--data", str(BENCH / "Set5"))["datasets"]["Set5"]["psnr"]
         for s in ("2", "2.5", "3")}
    assert p["2"] > p["2.5"] > p["3"]


def write_images(folder: Path, n=2, size=(30, 24)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(folder / f"im{i}.png")


def test_save_and_notes(tmp_path, capsys):
    write_images(tmp_path / "d")
    (tmp_path / "d" / "readme.txt").write_text("not an image")
    assert main(["eval", "--scale", "2", "--data", str(tmp_path / "d"), "--save", str(tmp_path / "o"),
                 "--json", str(tmp_path / "r.json")]) == 0
    cap = capsys.readouterr()
    assert "skipping non-image file" in cap.err and "readme.txt" in cap.err
    assert sorted(p.name for p in (tmp_path / "o" / "d").iterdir()) == ["im0.png", "im1.png"]
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["datasets"]["d"]["n"] == 2 and 10 < r["datasets"]["d"]["psnr"] < 60


def test_scale_defaults_to_the_models_own(tmp_path, capsys):
    write_images(tmp_path / "d", size=(36, 24))
    r = run_json(capsys, "--model", "espcn-x3", "--data", str(tmp_path / "d"))
    assert r["scale"] == 3 and r["crop_border"] == 3
    for model, message in (("bicubic", "bicubic needs --scale"), ("vdsr", "vdsr works at any scale")):
        assert main(["eval", "--model", model, "--data", str(tmp_path / "d")]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("case", ["missing", "empty", "corrupt", "scale0", "scaletext", "file"])
def test_bad_input_one_line_nonzero(tmp_path, capsys, case):
    data = tmp_path / "d"
    scale = "2"
    if case == "empty":
        data.mkdir()
    elif case == "corrupt":
        write_images(data, 1)
        (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"junk" * 10)
    elif case in ("scale0", "scaletext"):
        write_images(data, 1)
        scale = "0" if case == "scale0" else "two"
    elif case == "file":
        write_images(tmp_path / "x", 1)
        data = tmp_path / "x" / "im0.png"
    rc = main(["eval", "--scale", scale, "--data", str(data)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0
    assert len(err) == 1 and err[0].startswith("upsample eval: error:")
    if case == "corrupt":
        assert "broken.png" in err[0]
