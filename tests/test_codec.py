"""Codec study, clip maker and the joint (learned downscaler + upscaler) model: tiny inputs, seconds."""

from __future__ import annotations

import io
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from upsample import cli
from upsample.studies import codec_study
from upsample.studies.codec import decode_image, encode_image, encode_video, get_codec, parse_ladder, read_frames
from upsample.inference.downscale import Downscaler, load_downscaler
from upsample.errors import UserError
from upsample.models.downscaler import jpeg_proxy
from upsample.models.registry import create_model
from upsample.inference.load import load_upscaler

ROOT = Path(__file__).resolve().parents[1]
T91 = ROOT.parent / "shared" / "datasets" / "train" / "T91"


def synthetic(h=48, w=64, seed=0) -> np.ndarray:
    """Smooth gradients, an edge and some texture: every codec has something to spend bits on."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255.0 / w, y * 255.0 / h, 128 + 60 * np.sin(x / 3.0) * np.cos(y / 5.0)], -1)
    img[:, w // 2:] = 255 - img[:, w // 2:]
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", ["jpeg", "webp", "avif"])
def test_image_ladders_give_monotone_sizes(name):
    codec = get_codec(name)
    img = synthetic()
    sizes = [len(encode_image(codec, img, q)) for q in codec.ladder]
    assert len(codec.ladder) >= 5
    assert all(a < b for a, b in zip(sizes, sizes[1:])), sizes
    assert decode_image(encode_image(codec, img, codec.ladder[-1])).shape == img.shape


def test_video_ladder_gives_monotone_sizes_and_decodes():
    codec = get_codec("x264")
    frames = [np.roll(synthetic(32, 48), 2 * i, axis=1) for i in range(4)]
    sizes = [encode_video(codec, frames, crf, Fraction(25))[1] for crf in (40, 30, 20)]
    assert sizes[0] < sizes[1] < sizes[2], sizes


def test_bd_of_a_curve_against_itself_is_zero():
    rates, psnr = np.array([0.2, 0.4, 0.8, 1.6, 3.2]), np.array([28.0, 31.0, 34.0, 37.5, 41.0])
    m = codec_study.bd_metrics((rates, psnr), (rates, psnr))
    for key in ("bd_rate_pchip", "bd_rate_akima", "bd_psnr_pchip", "bd_psnr_akima"):
        assert abs(m[key]) < 1e-9, (key, m[key])
    assert m["psnr_range"] == [28.0, 41.0]
    # a curve that needs half the bits everywhere: BD-rate -50 %
    half = codec_study.bd_metrics((rates, psnr), (rates / 2, psnr))
    assert half["bd_rate_pchip"] == pytest.approx(-50.0, abs=1e-6)


def test_crossover_and_hull():
    rates = np.array([0.1, 0.2, 0.4, 0.8, 1.6])
    full = (rates, np.array([25.0, 29.0, 33.0, 37.0, 41.0]))
    flat = (rates, np.array([27.0, 30.0, 32.0, 33.0, 33.5]))  # wins low, loses high
    c = codec_study.crossover(full, [flat])
    assert c["status"] == "below" and 0.2 < c["rates"][0] < 0.4
    assert codec_study.crossover(full, [(rates, full[1] - 1)])["status"] == "none-full-wins"
    rows = [{"pipeline": "full", "q": i, "bpp": r, "psnr": p} for i, (r, p) in enumerate(zip(*full))]
    rows += [{"pipeline": "du", "q": i, "bpp": r, "psnr": p} for i, (r, p) in enumerate(zip(*flat))]
    hull = codec_study.convex_hull(rows, "bpp")
    assert hull[0]["pipeline"] == "du" and hull[-1]["pipeline"] == "full"
    assert all(a["bpp"] < b["bpp"] and a["psnr"] < b["psnr"] for a, b in zip(hull, hull[1:]))


def test_down_up_output_has_full_size_with_bicubic_and_learned_downscaler():
    hr = synthetic(40, 56)
    torch.manual_seed(0)
    joint = create_model("joint-x2").eval()
    down = load_downscaler("bicubic", scale=2)
    learned = codec_study.Pipeline("joint", load_downscaler("joint-x2", scale=2), load_upscaler(
        "joint-x2", scale=2, backend="torch"))
    pipes = [codec_study.Pipeline("bic", down, load_upscaler("bicubic", scale=2, backend="torch")), learned]
    points = codec_study.measure_image(hr, get_codec("jpeg"), (30, 80), pipes, 2.0, 2)
    assert {p["pipeline"] for p in points} == {"full", "bic", "joint"} and len(points) == 6
    du = [p for p in points if p["pipeline"] == "bic"]
    full = [p for p in points if p["pipeline"] == "full"]
    assert all(d["bytes"] < f["bytes"] for d, f in zip(du, full))  # a quarter of the pixels
    lr = codec_study.downscale_uint8(learned.down, hr)
    assert lr.shape == (20, 28, 3)
    assert codec_study.upscale_uint8(learned.up, lr).shape == hr.shape
    # untrained, the learned downscaler is bicubic (its residual starts at zero)
    assert np.abs(lr.astype(int) - codec_study.downscale_uint8(down, hr).astype(int)).max() <= 1
    assert joint(torch.rand(1, 1, 16, 16), hr=True).shape == (1, 1, 16, 16)


def test_jpeg_proxy_tracks_real_jpeg_and_passes_gradients():
    y = torch.from_numpy(synthetic(64, 64)[..., 0] / 255.0 * 219 / 255 + 16 / 255).float()[None, None]
    full = np.clip(np.round((y[0, 0].numpy() * 255 - 16) * 255 / 219), 0, 255).astype(np.uint8)
    for q in (30, 80):
        buf = io.BytesIO()
        Image.fromarray(full).save(buf, "JPEG", quality=q)
        real = np.asarray(Image.open(buf), np.float64) * 219 / 255 + 16
        proxy = jpeg_proxy(y, torch.tensor([q]))[0, 0].numpy() * 255
        err = np.sqrt(np.mean((proxy - real) ** 2))
        assert err < 2.0, (q, err)
    x = y.clone().requires_grad_(True)
    jpeg_proxy(x, torch.tensor([50])).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0

    torch.manual_seed(0)
    joint = create_model("joint-x2", rate_weight=1e-3).train()
    out = joint(torch.rand(2, 1, 32, 32), hr=True)
    assert joint.aux_loss is not None and joint.aux_loss.item() > 0  # the rate term for train
    (out.mean() + joint.aux_loss).backward()
    assert joint.down.tail.weight.grad.abs().sum() > 0
    joint.eval()(torch.rand(1, 1, 16, 16), hr=True)
    assert joint.aux_loss is None


def test_make_clip_length_fps_and_a_video_study(tmp_path, capsys):
    src = tmp_path / "big.png"
    Image.fromarray(synthetic(120, 160)).save(src)
    clip = tmp_path / "clip.mkv"
    assert cli.main(["make-clip", str(src), "-o", str(clip), "--size", "64x48", "--seconds", "1.2",
                     "--fps", "10", "--motion", "panzoom"]) == 0
    frames, fps = read_frames(clip)
    assert len(frames) == 12 and fps == 10 and frames[0].shape == (48, 64, 3)
    out = tmp_path / "study"
    assert cli.main(["codec-study", str(clip), "--out", str(out), "--codecs", "x264",
                     "--ladder", "x264=40,30", "--threads", "1"]) == 0
    study = json.loads((out / "study.json").read_text())
    assert {p["pipeline"] for p in study["points"]} == {"full", "bicubic>bicubic"}
    assert all(p["kbps"] > 0 for p in study["points"])
    assert (out / "rd_clip_x264.png").stat().st_size > 0
    assert "BD-rate PCHIP" in (out / "summary.md").read_text()


def test_image_study_writes_every_output_and_merges(tmp_path, capsys):
    outs = []
    for i in range(2):  # one folder split in two, as over two machines
        folder = tmp_path / f"part{i}" / "imgs"
        folder.mkdir(parents=True)
        Image.fromarray(synthetic(48, 64, seed=i)).save(folder / f"{i}.png")
        outs.append(tmp_path / f"study{i}")
        assert cli.main(["codec-study", str(folder), "--out", str(outs[-1]), "--codecs", "jpeg",
                         "--ladder", "jpeg=20,50,90", "--pipeline", "b=bicubic:bicubic"]) == 0
        rows = (outs[-1] / "points.csv").read_text().splitlines()
        assert len(rows) == 1 + 3 * 2  # header + rate points x pipelines
        assert (outs[-1] / "rd_imgs_jpeg.png").exists() and (outs[-1] / "curves.csv").exists()
    assert "imgs jpeg b: BD-rate" in capsys.readouterr().out
    merged = tmp_path / "merged"
    assert cli.main(["codec-study", "--merge", *map(str, outs), "--out", str(merged),
                     "--vs", "b:b"]) == 0
    study = json.loads((merged / "study.json").read_text())
    assert len(study["points"]) == 12 and study["sources"][0]["items"] == 2
    assert abs(study["results"][0]["pairs"][0]["bd_rate_pchip"]) < 1e-9
    assert "| b vs b |" in (merged / "summary.md").read_text()
    assert {c["n"] for c in study["curves"]} == {2}


@pytest.mark.parametrize("args,message", [
    (["--codecs", "jpeg2000"], "unknown codec 'jpeg2000'"),
    (["--codecs", "x265"], "x265 is a video codec but no video clip was given"),
    (["--codecs", "jpeg", "--ladder", "jpeg=0,200"], "each quality must be in 1..100"),
    (["--codecs", "jpeg", "--pipeline", "bicubic"], "--pipeline expects [LABEL=]DOWN:UP"),
    (["--codecs", "jpeg", "--pipeline", "vdsr:bicubic"], "vdsr has no learned downscaler"),
    (["--codecs", "jpeg", "--pipeline", "bicubic:espcn-x3"], "x3 model"),
    (["--codecs", "jpeg", "--vs", "a:b"], "--vs expects TEST:ANCHOR"),
])
def test_bad_study_options_are_one_line(tmp_path, capsys, args, message):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(synthetic()).save(folder / "a.png")
    assert cli.main(["codec-study", str(folder), "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err, err


def test_empty_folder_and_missing_input_are_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for target, message in ((tmp_path / "empty", "no images in"), (tmp_path / "nope", "not found")):
        assert cli.main(["codec-study", str(target), "--out", str(tmp_path / "o"), "--codecs", "jpeg"]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and message in err, err
    small = tmp_path / "small.png"
    Image.fromarray(synthetic(40, 40)).save(small)
    assert cli.main(["make-clip", str(small), "-o", str(tmp_path / "c.mkv"), "--size", "64x48"]) == 2
    assert "smaller than the clip" in capsys.readouterr().err
    # exactly the clip's size: a pan would not move (a still clip, said nowhere before)
    assert cli.main(["make-clip", str(small), "-o", str(tmp_path / "c.mkv"), "--size", "40x40"]) == 2
    assert "would not move" in capsys.readouterr().err and not (tmp_path / "c.mkv").exists()


def test_ladder_parsing():
    assert parse_ladder(get_codec("jpeg"), "10,50") == (10, 50)
    assert parse_ladder(get_codec("x265"), None) == get_codec("x265").ladder
    with pytest.raises(UserError, match="crf must be in 0..51"):
        parse_ladder(get_codec("x264"), "60")


@pytest.mark.skipif(not T91.is_dir(), reason="needs ../shared/datasets/train/T91")
def test_joint_model_trains_with_upsample_train(tmp_path, capsys):
    sets = [f"data.train=[{json.dumps(str(T91))}]", "data.max_images=4", "data.batch_size=4",
            "data.patch_size=32", "data.workers=0", "train.steps=3", "train.log_every=1",
            "train.ckpt_every=3", "val.every=3", "val.max_images=1", "val.crop=48", "train.amp=none",
            "train.channels_last=false"]
    args = ["train", str(ROOT / "configs" / "joint-x2.toml"), "--run-dir", str(tmp_path / "run"),
            "--device", "cpu"]
    for s in sets:
        args += ["--set", s]
    assert cli.main(args) == 0
    ckpt = tmp_path / "run" / "last.safetensors"
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
    assert any("val_psnr" in r for r in records)
    down = load_downscaler(str(ckpt), scale=2)  # the trained checkpoint serves both ends
    assert type(down) is not Downscaler
    assert load_upscaler(str(ckpt), scale=2, backend="torch").scale == 2
