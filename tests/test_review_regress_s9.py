"""What a review of session 9's own changes found they broke, pinned: an unused alpha byte in a
video, x264's rate in AVI, 16-bit BMPs Pillow reads."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
from PIL import Image

from upsample import cli
from upsample.media import video as media_video
from upsample.media.imageio import read_planes


def test_a_video_whose_alpha_byte_is_unused_is_not_black(tmp_path, capsys):
    # 32-bit BGRA captures store 0 in the alpha byte: it is no hole, and the picture must show
    src = tmp_path / "raw.avi"
    with av.open(str(src), "w") as out:
        s = out.add_stream("rawvideo", rate=25)
        s.width, s.height, s.pix_fmt = 32, 24, "bgra"
        for _ in range(3):
            bgra = np.zeros((24, 32, 4), np.uint8)
            bgra[..., :3] = (40, 160, 220)  # B, G, R
            out.mux(s.encode(av.VideoFrame.from_ndarray(bgra, format="bgra")))
        out.mux(s.encode(None))
    assert cli.main(["video", str(src), "-o", str(tmp_path / "o.mp4"), "--model", "bicubic"]) == 0
    assert "transparency" not in capsys.readouterr().err  # nothing lost: there was none
    with av.open(str(tmp_path / "o.mp4")) as c:
        rgb = next(c.decode(video=0)).to_ndarray(format="rgb24").reshape(-1, 3).mean(0)
    assert np.abs(rgb - (220, 160, 40)).max() < 8, rgb


def test_h264_in_avi_carries_picture_timing_without_capping_its_rate():
    options = media_video.with_picture_timing({"crf": "16"}, 1920, 1080, "yuv420p", Fraction(1, 25))
    params = dict(p.split("=") for p in options["x264-params"].split(":"))
    assert params["nal-hrd"] == "vbr" and int(params["vbv-maxrate"]) >= 800000  # a cap that never binds
    assert options["level"] == "4" and options["crf"] == "16"  # x264's own level for 1080p25


def test_a_16_bit_bmp_pillow_reads_is_read_as_pillow_reads_it(tmp_path):
    from test_review_images_s9 import _bmp, _pack  # the BMP writer of the bit-mask tests
    rgba = np.random.default_rng(0).integers(0, 256, (5, 7, 4), dtype=np.uint8)
    for masks in [(0xF800, 0x7E0, 0x1F, 0), (0x7C00, 0x3E0, 0x1F, 0)]:  # RGB565, RGB555
        _bmp(tmp_path / "a.bmp", _pack(rgba, masks), 16, masks)
        with Image.open(tmp_path / "a.bmp") as img:
            assert np.array_equal(read_planes(tmp_path / "a.bmp").color, np.asarray(img.convert("RGB")))
    masks = (0x7C00, 0x3E0, 0x1F, 0x8000)  # A1R5G5B5, decoded here: its colour on Pillow's scale
    _bmp(tmp_path / "b.bmp", _pack(rgba, masks), 16, masks)
    _bmp(tmp_path / "c.bmp", _pack(rgba, masks[:3] + (0,)), 16, masks[:3] + (0,))
    planes = read_planes(tmp_path / "b.bmp")
    visible = planes.alpha[..., 0] > 0  # the colour under alpha 0 is filled from its neighbours
    with Image.open(tmp_path / "c.bmp") as img:
        assert visible.any() and np.array_equal(planes.color[visible], np.asarray(img.convert("RGB"))[visible])


def test_max_minutes_of_a_call_from_python_counts_from_the_call(tmp_path, monkeypatch):
    # a notebook training several recipes in one process: each call gets its own minutes
    from pathlib import Path

    from upsample.training import loop
    seen = {}
    monkeypatch.setattr(loop, "train", lambda *a, **k: seen.setdefault("started", k["started"]) and 0)
    tiny = Path(__file__).resolve().parents[1] / "configs" / "tiny.toml"
    import time
    before = time.time()
    cli.main(["train", str(tiny), "--run-dir", str(tmp_path / "r"), "--max-minutes", "1"])
    assert before <= seen["started"] <= time.time()
