"""Regressions and gaps found reviewing the s14 changes (kept resolution, AVI lead-in silence,
--max-pixels on more commands, the summary of an output written as PNG), MXF's late PCM sound."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from upsample import cli
from upsample.media.imageio import read_planes

W, H, FPS = 96, 64, 25


def test_a_tiffs_resolution_is_kept(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "scan.png", dpi=(300, 300))
    assert read_planes(tmp_path / "scan.png").info.get("dpi") == pytest.approx((300, 300), abs=0.01)
    Image.fromarray(arr).save(tmp_path / "scan.tif", dpi=(300, 300))
    assert read_planes(tmp_path / "scan.tif").info.get("dpi") == pytest.approx((300, 300), abs=0.01)


def _picture(i: int) -> np.ndarray:
    y, x = np.mgrid[0:H, 0:W]
    img = np.zeros((H, W, 3), np.uint8)
    img[..., 0] = (x * 255 // (W - 1) + i * 7) % 256
    img[..., 1] = y * 255 // (H - 1)
    return img


def _late_pcm_clip(path, codec: str, start: float = 0.5) -> None:
    """3 s of picture and a 440 Hz PCM tone from `start` to the end."""
    out = av.open(str(path), "w")
    v = out.add_stream("libx264", rate=FPS)
    v.width, v.height, v.pix_fmt = W, H, "yuv420p"
    a = out.add_stream(codec, rate=48000)
    a.layout = "stereo"
    for i in range(3 * FPS):
        frame = av.VideoFrame.from_ndarray(_picture(i), format="rgb24")
        frame.pts, frame.time_base = i, Fraction(1, FPS)
        out.mux(v.encode(frame))
    out.mux(v.encode(None))
    n = int((3 - start) * 48000)
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / 48000)
    fmt, scale, dtype = ("s32", 2 ** 31, np.int32) if codec == "pcm_s24le" else ("s16", 32767, np.int16)
    for k in range(0, n, 1024):
        part = tone[k:k + 1024]
        data = (np.stack([part, part]) * scale).astype(dtype).T.reshape(1, -1)
        sound = av.AudioFrame.from_ndarray(data, format=fmt, layout="stereo")
        sound.sample_rate, sound.pts, sound.time_base = 48000, int(start * 48000) + k, Fraction(1, 48000)
        out.mux(a.encode(sound))
    out.mux(a.encode(None))
    out.close()


def _sound_and_frames(path) -> tuple[float, float, int]:
    """(where the tone starts, seconds of sound, as a player without start times plays them; frames)."""
    with av.open(str(path)) as c:
        rate = c.streams.audio[0].sample_rate
        parts = [f.to_ndarray() for f in c.decode(audio=0)]
        samples = np.concatenate([p.reshape(-1, 2) if p.shape[0] == 1 else p.T for p in parts]).astype(float)
        c.seek(0)
        frames = sum(1 for _ in c.decode(video=0))
    loud = np.flatnonzero(np.abs(samples[:, 0]) > 0.1 * np.abs(samples[:, 0]).max())
    return loud[0] / rate, len(samples) / rate, frames


def test_24_bit_pcm_that_starts_late_keeps_its_time_in_avi(tmp_path):
    _late_pcm_clip(tmp_path / "cam.mov", "pcm_s24le")
    assert cli.main(["video", str(tmp_path / "cam.mov"), "-o", str(tmp_path / "out.avi"), "--model", "bicubic",
                     "--scale", "2"]) == 0
    start, length, frames = _sound_and_frames(tmp_path / "out.avi")
    assert abs(start - 0.5) < 0.005 and abs(length - 3.0) < 0.03 and frames == 75


def test_pcm_that_starts_late_keeps_its_time_and_every_frame_in_mxf(tmp_path):
    _late_pcm_clip(tmp_path / "cam.mov", "pcm_s16le")
    assert cli.main(["video", str(tmp_path / "cam.mov"), "-o", str(tmp_path / "out.mxf"), "--model", "bicubic",
                     "--scale", "2"]) == 0
    start, _, frames = _sound_and_frames(tmp_path / "out.mxf")
    assert frames == 75 and abs(start - 0.5) < 0.005


def test_make_clip_takes_the_max_pixels_its_refusal_names(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # process-wide: restored after
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "still.png")
    try:
        status = cli.main(["make-clip", str(tmp_path / "still.png"), "-o", str(tmp_path / "clip.mp4"),
                           "--max-pixels", "1000"])
    except SystemExit as exc:  # argparse: unrecognized arguments
        status = exc.code
    err = capsys.readouterr().err
    assert status == 2 and "is too large" in err and "unrecognized arguments" not in err, err


def test_the_summary_names_the_png_also_when_it_is_skipped(tmp_path, capsys):
    arr = np.random.default_rng(0).integers(0, 256, (20, 20, 4), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "in.png")
    args = ["image", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.jpg"), "--model", "bicubic"]
    assert cli.main(args) == 0
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("out.png")
    assert cli.main(args) == 0
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "1 skipped" in last and last.endswith("out.png"), last
