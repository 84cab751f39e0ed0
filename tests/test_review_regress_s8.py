"""Regressions of the s8 reviews' own fixes (review regress s8): a photo named like an output
(holiday_x2.jpg) but of another size is an input again; an earlier output named as a file is
upscaled and not counted as skipped; a large folder's listing resolves each folder once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from upsample import cli
from upsample.inference import batch


def _png(folder: Path, name: str, size=(10, 8), seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / name)
    return folder / name


def _image(*args) -> int:
    return cli.main(["image", *map(str, args), "--model", "bicubic", "--scale", "2"])


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_photo_named_like_an_output_but_not_of_its_size_is_upscaled(tmp_path, capsys):
    """holiday_x2.jpg beside holiday.jpg, a photo of its own (not twice its size), was left out
    of every run as an 'earlier output', even with -o elsewhere."""
    photos = tmp_path / "photos"
    _png(photos, "holiday.jpg", (10, 8)), _png(photos, "holiday_x2.jpg", (30, 20), seed=1)
    assert _image(photos, "-o", tmp_path / "out") == 0
    assert _names(tmp_path / "out") == ["holiday_x2.png", "holiday_x2_x2.png"]
    err = capsys.readouterr().err
    assert "not read as an input" not in err and "2 written, 0 skipped" in err


def test_an_earlier_output_named_as_a_file_too_is_upscaled_and_not_counted_skipped(tmp_path, capsys):
    """The note's advice, `image photos photos/a_x2.png`: it is upscaled, and neither the note
    nor the count says it was left out."""
    photos = tmp_path / "photos"
    _png(photos, "a.png", (10, 8)), _png(photos, "a_x2.png", (20, 16), seed=1)
    assert _image(photos, "-o", tmp_path / "out") == 0
    err = capsys.readouterr().err
    assert "1 image(s) in" in err and "not read as an input" in err and "name the files" in err
    assert "1 written, 1 skipped" in err
    assert _image(photos, photos / "a_x2.png", "-o", tmp_path / "out2") == 0
    assert _names(tmp_path / "out2") == ["a_x2.png", "a_x2_x2.png"]
    err = capsys.readouterr().err
    assert "not read as an input" not in err and "2 written, 0 skipped" in err


def test_an_output_of_an_exif_rotated_photo_is_recognised_either_way_round():
    assert batch._upscaled_size((10, 8), (20, 16), 2.0)
    assert batch._upscaled_size((10, 8), (16, 20), 2.0)  # written upright
    assert batch._upscaled_size((10, 8), (15, 12), None)  # a --suffix run: some scale
    assert not batch._upscaled_size((10, 8), (30, 20), 2.0)
    assert not batch._upscaled_size((10, 8), (10, 8), None)  # the same size: not an upscale
    assert not batch._upscaled_size(None, (20, 16), 2.0)


def test_a_folders_listing_resolves_each_folder_not_each_file(tmp_path, monkeypatch):
    """50,000 images took 40 s to list where 7 s did: a realpath per file, twice."""
    for i in range(30):
        (tmp_path / "in" / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / f"d{i % 3}" / f"img{i}.png").write_bytes(b"")
    calls = []
    real = Path.resolve
    monkeypatch.setattr(Path, "resolve", lambda self, *a, **k: calls.append(self) or real(self, *a, **k))
    jobs, left_out = batch.collect_inputs([str(tmp_path / "in")], tmp_path / "out")
    assert len(jobs) == 30 and left_out == []
    assert len(calls) < 10, len(calls)


def test_load_takes_0_and_1_as_switches_as_it_did_before(tmp_path):
    """half=int(os.environ.get("HALF", 0)) worked before switches were checked; "no" stays refused."""
    import pytest
    import upsample
    up = upsample.load("bicubic", 2, half=0, allow_untrained=1)
    assert up.scale == 2
    with pytest.raises(TypeError, match="half must be True or False"):
        upsample.load("bicubic", 2, half=2)
    with pytest.raises(TypeError, match="half must be True or False"):
        upsample.load("bicubic", 2, half="no")


def _psnr(a, b) -> float:
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return 10 * np.log10(255 ** 2 / mse)


def test_a_wmv_output_keeps_the_quality_an_mp4_had(tmp_path):
    """.wmv became WMV2 at FFmpeg's default 200 kb/s at any size: blocky where H.264 was not.
    Against a lossless encode of the same upscale, WMV2 must stay close."""
    import av
    hr = next(iter(sorted(Path("/work/shared/datasets/benchmark/Set14").glob("*.png"))), None)
    rng = np.random.default_rng(0)
    base = (np.asarray(Image.open(hr).convert("RGB"))[:144, :176] if hr is not None
            else rng.integers(0, 255, (144, 176, 3), dtype=np.uint8))
    src = tmp_path / "in.mkv"
    with av.open(str(src), "w") as c:
        v = c.add_stream("libx264", rate=25, options={"crf": "0"})
        v.width, v.height, v.pix_fmt = 176, 144, "yuv444p"
        for i in range(8):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.roll(base, 2 * i, axis=1)), format="rgb24")
            for p in v.encode(frame):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
    outs = {}
    for name, extra in (("ref.mkv", ["--codec", "libx264", "--crf", "0"]), ("out.wmv", [])):
        assert cli.main(["video", str(src), "-o", str(tmp_path / name), "--model", "bicubic",
                         "--scale", "2", *extra]) == 0
        with av.open(str(tmp_path / name)) as c:
            outs[name] = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(outs["out.wmv"]) == len(outs["ref.mkv"]) == 8
    psnr = np.mean([_psnr(a, b) for a, b in zip(outs["out.wmv"], outs["ref.mkv"])])
    assert psnr > 33, psnr  # 200 kb/s: about 28
