"""`upsample eval` reproduces the reference bicubic table and refuses bad input with one line."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scipy.ndimage import gaussian_filter

from upsample.cli import main
from upsample.data.colour import to_uint8
from upsample.evaluation import evaluate

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
    assert "(not an image file)" in cap.err and "readme.txt" in cap.err
    assert sorted(p.name for p in (tmp_path / "o" / "d").iterdir()) == ["im0.png", "im0_sbs.png",
                                                                        "im1.png", "im1_sbs.png"]
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["datasets"]["d"]["n"] == 2 and 10 < r["datasets"]["d"]["psnr"] < 60


def test_save_refuses_two_images_of_one_saved_name(tmp_path, capsys):
    """x.png and x.jpg would both be saved as x.png: refused before a model loads (the second
    replaced the first, silently)."""
    write_images(tmp_path / "d", n=1)
    Image.open(tmp_path / "d" / "im0.png").save(tmp_path / "d" / "im0.jpg")
    assert main(["eval", "--scale", "2", "--data", str(tmp_path / "d"), "--save", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--save would write" in err and "im0.png" in err and not (tmp_path / "o").exists()


def test_bicubic_at_x1_is_refused(tmp_path, capsys):
    write_images(tmp_path / "d", n=1)
    assert main(["eval", "--model", "bicubic", "--scale", "1", "--data", str(tmp_path / "d")]) == 2
    assert "nothing to measure" in capsys.readouterr().err  # it reported 338 dB


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


# ------------------------------------------------------------------ catid's protocol and options


def pil_bicubic_expected(folder: Path, scale=2, border=4) -> tuple[float, float]:
    """catid's evaluate.py for plain bicubic, written out with Pillow and numpy alone: LR =
    Image.resize((W // s, H // s), BICUBIC), back up to (W, H) the same way, RGB on [0, 1] with
    `border` cut; SSIM as scikit-image's defaults (7x7 mean, sample covariance, per channel,
    averaged over the windows that fit)."""
    psnrs, ssims = [], []
    for path in sorted(folder.iterdir()):
        hr = Image.open(path).convert("RGB")
        w, h = hr.width // scale * scale, hr.height // scale * scale
        hr = hr.crop((0, 0, w, h))
        up = hr.resize((w // scale, h // scale), Image.BICUBIC).resize((w, h), Image.BICUBIC)
        a, b = (np.asarray(im, np.float64)[border:-border, border:-border] / 255 for im in (hr, up))
        psnrs.append(10 * np.log10(1 / np.mean((a - b) ** 2)))
        per_channel = []
        for c in range(3):
            wa, wb = (np.lib.stride_tricks.sliding_window_view(x[..., c], (7, 7)) for x in (a, b))
            ma, mb = wa.mean((-1, -2)), wb.mean((-1, -2))
            va, vb = wa.var((-1, -2), ddof=1), wb.var((-1, -2), ddof=1)
            cov = ((wa - ma[..., None, None]) * (wb - mb[..., None, None])).sum((-1, -2)) / 48
            c1, c2 = 0.01 ** 2, 0.03 ** 2
            m = (2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2))
            per_channel.append(m.mean())
        ssims.append(np.mean(per_channel))
    return float(np.mean(psnrs)), float(np.mean(ssims))


def check_catid_bicubic(capsys, folder: Path):
    r = run_json(capsys, "--protocol", "catid", "--model", "bicubic", "--scale", "2", "--data", str(folder))
    assert r["protocol"] == "catid" and not r["y_channel"] and r["crop_border"] == 4
    d = r["datasets"][folder.name]
    psnr, ssim = pil_bicubic_expected(folder)
    assert abs(d["psnr"] - psnr) < 1e-9 and abs(d["ssim"] - ssim) < 1e-9
    assert (d["bicubic_psnr"], d["bicubic_ssim"]) == (d["psnr"], d["ssim"])  # the baseline is the model


@needs_bench
def test_catid_protocol_bicubic_on_set5_is_pil_bicubic(capsys):
    check_catid_bicubic(capsys, BENCH / "Set5")


def test_catid_protocol_bicubic_on_odd_sizes(tmp_path, capsys):
    write_images(tmp_path / "d", n=2, size=(31, 26))  # an odd height: cut to 30
    check_catid_bicubic(capsys, tmp_path / "d")


def test_per_image_rows_and_montages(tmp_path, capsys):
    write_images(tmp_path / "d", n=2, size=(30, 24))
    r = run_json(capsys, "--protocol", "catid", "--model", "espcn-rgb-x2", "--data", str(tmp_path / "d"),
                 "--per-image", "--save", str(tmp_path / "o"))
    d = r["datasets"]["d"]
    assert [row["image"] for row in d["images"]] == ["im0.png", "im1.png"]
    assert d["psnr"] == pytest.approx(np.mean([row["psnr"] for row in d["images"]]))
    assert all(set(row) == {"image", "psnr", "ssim", "bicubic_psnr", "bicubic_ssim"} for row in d["images"])
    sbs = np.asarray(Image.open(tmp_path / "o" / "d" / "im0_sbs.png"))
    hr = np.asarray(Image.open(tmp_path / "d" / "im0.png"))
    model = np.asarray(Image.open(tmp_path / "o" / "d" / "im0.png"))
    top = sbs.shape[0] - 30  # the label strip
    assert sbs.shape == (30 + top, 4 * 24, 3) and top > 0
    assert np.array_equal(sbs[top:, :24], hr) and np.array_equal(sbs[top:, 24:48], model)
    lr = np.asarray(Image.fromarray(hr).resize((12, 15), Image.BICUBIC))
    assert np.array_equal(sbs[top:top + 15, 72:84], lr) and not sbs[top + 15:, 72:].any()


def test_gaussian_degrade_for_eval(tmp_path, capsys):
    write_images(tmp_path / "d", n=1, size=(32, 32))
    hr = np.asarray(Image.open(tmp_path / "d" / "im0.png"))
    lr = evaluate.make_input(hr, 2, evaluate.PROTOCOLS["papers"], evaluate.Degrade("gaussian", 1.5), "cpu")
    # the same LR from scipy: Gaussian of radius 3 sigma, mirrored borders, every 2nd pixel from 0
    want = gaussian_filter(hr / 255.0, sigma=(1.5, 1.5, 0), mode="mirror", truncate=3.0)[::2, ::2]
    assert np.array_equal(to_uint8(lr), np.round(np.clip(want, 0, 1) * 255).astype(np.uint8))
    base = run_json(capsys, "--scale", "2", "--data", str(tmp_path / "d"))
    blur = run_json(capsys, "--scale", "2", "--data", str(tmp_path / "d"), "--degrade", "gaussian", "--sigma", "1.5")
    assert blur["degrade"] == {"kind": "gaussian", "sigma": 1.5}
    assert blur["datasets"]["d"]["psnr"] < base["datasets"]["d"]["psnr"]  # blurred LR: less to recover
    for extra, says in ((["--degrade", "gaussian"], "needs --sigma"), (["--sigma", "1"], "--sigma is the blur"),
                        (["--degrade", "gaussian", "--sigma", "40"], "--sigma 40")):
        assert main(["eval", "--scale", "2", "--data", str(tmp_path / "d"), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err


def test_json_alone_prints_json_and_json_file_writes_it_whole(tmp_path, capsys):
    data = tmp_path / "hr"
    data.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(data / "a.png")
    assert main(["eval", "--model", "bicubic", "--scale", "2", "--data", str(data), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    out = tmp_path / "r" / "eval.json"
    assert main(["eval", "--model", "bicubic", "--scale", "2", "--data", str(data), "--json", str(out)]) == 0
    assert "PSNR" in capsys.readouterr().out and json.loads(out.read_text()) == printed
    assert [p.name for p in out.parent.iterdir()] == ["eval.json"]  # no temporary file left
