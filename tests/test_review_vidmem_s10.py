"""`upsample video` under --max-memory counts (and bounds) what the encoder holds; a --start past
the clip's end is refused before the model loads (review s10)."""

from __future__ import annotations

import gc

import av
import numpy as np
import pytest

from upsample import cli
from upsample.inference import api, video
from upsample.inference.tiler import Tiler
from upsample.inference.upscaler import BicubicUpscaler
from upsample.media import video as media_video

W, H = 64, 48


def make_clip(path, *, frames=5, fps=25, fmt=None):
    """A tiny H.264 clip made with PyAV (MPEG-TS where `fmt` says)."""
    with av.open(str(path), "w", format=fmt) as c:
        v = c.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = W, H, "yuv420p"
        for i in range(frames):
            img = np.full((H, W, 3), 40 * i % 256, np.uint8)
            img[:, : W // 2, 1] = 200
            for p in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)


def x264_settings(path) -> str:
    """The settings x264 wrote into its SEI (its "options: ..." line)."""
    data = path.read_bytes()
    at = data.find(b"options: ")
    assert at >= 0
    return data[at: data.find(b"\x00", at)].decode("ascii", "replace")


def test_bounded_encoder_options_only_for_x26x():
    opts = media_video.bounded_encoder_options("libx264", {"crf": "18", "preset": "slow"})
    assert opts["rc-lookahead"] == str(media_video.BOUNDED_LOOKAHEAD) and int(opts["threads"]) >= 1
    assert opts["crf"] == "18" and opts["preset"] == "slow"  # quality settings as asked
    x265 = media_video.bounded_encoder_options("libx265", media_video.encoder_options("libx265", None, None))
    assert "log-level=error" in x265["x265-params"] and "rc-lookahead=10" in x265["x265-params"]
    assert "frame-threads=" in x265["x265-params"]
    assert media_video.bounded_encoder_options("libvpx-vp9", {"crf": "32"}) == {"crf": "32"}
    assert media_video.encoder_held_bytes("libx264", 2560, 1440) > 100e6  # its buffered frames count
    assert media_video.encoder_held_bytes("mpeg4", 2560, 1440) == 0


def test_plan_reserves_the_encoders_frames_under_max_memory(tmp_path, monkeypatch):
    """The tiles' budget leaves room for x264's frames and the queued ones: it reserved one
    frame, and a 1G run peaked at 2 GB."""
    make_clip(tmp_path / "a.mp4")
    seen = []
    monkeypatch.setattr(Tiler, "plan_tile", lambda self, h, w, c, d, reserved=0, batch=1: seen.append(reserved) or 0)
    with av.open(str(tmp_path / "a.mp4")) as c:
        cc = c.streams.video[0].codec_context
        up = BicubicUpscaler(2)
        video._plan(up, cc, "yuv420p", batch=1, tile=None, max_memory=None, tile_batch=None, codec="libx264")
        without = seen[-1]
        assert without == 2 * H * 2 * W * 3  # one RGB output frame, as before
        video._plan(up, cc, "yuv420p", batch=1, tile=None, max_memory=1 << 30, tile_batch=None, codec="libx264")
        held = video.held_outside_tiles("libx264", "yuv420p", (2 * H, 2 * W), 1, 1)
        assert seen[-1] == without + held
        assert held >= media_video.encoder_held_bytes("libx264", 2 * W, 2 * H) + 4 * (2 * H * 2 * W * 3 // 2)


def test_max_memory_bounds_x264_lookahead_only_when_given(tmp_path):
    make_clip(tmp_path / "a.mp4")
    up = BicubicUpscaler(2)
    video.upscale_video(tmp_path / "a.mp4", tmp_path / "free.mp4", up)
    video.upscale_video(tmp_path / "a.mp4", tmp_path / "capped.mp4", up, max_memory=4 << 30)
    free, capped = x264_settings(tmp_path / "free.mp4"), x264_settings(tmp_path / "capped.mp4")
    assert "rc_lookahead=40" in free  # x264's own default (preset medium) without --max-memory
    assert f"rc_lookahead={media_video.BOUNDED_LOOKAHEAD} " in capped
    same = lambda s: [k for k in s.split() if k.startswith(("crf=", "ref=", "bframes=", "subme="))]
    assert same(free) == same(capped)  # the quality settings are the same


def test_start_past_the_end_is_refused_before_the_model_loads(tmp_path, monkeypatch, capsys):
    make_clip(tmp_path / "a.mp4", frames=5)  # 0.2 s
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr(api, "make_upscaler", no_model)
    out = tmp_path / "o.mp4"
    assert cli.main(["video", str(tmp_path / "a.mp4"), "-o", str(out), "--start", "99"]) == 2
    err = capsys.readouterr().err
    assert "--start 99" in err and "0.20 s long" in err and "Traceback" not in err
    assert not out.exists()
    assert media_video.video_length(tmp_path / "a.mp4") == pytest.approx(0.2, abs=0.01)


def test_unknown_length_keeps_the_late_check(tmp_path, capsys):
    """MPEG-TS's duration is an estimate: no early refusal, the frames read say it."""
    make_clip(tmp_path / "a.ts", frames=5, fmt="mpegts")
    assert media_video.video_length(tmp_path / "a.ts") is None
    assert cli.main(["video", str(tmp_path / "a.ts"), "-o", str(tmp_path / "o.mp4"),
                     "--model", "bicubic", "--start", "99"]) == 2
    assert "no video frames in the chosen --start/--duration window" in capsys.readouterr().err


def test_frames_in_side_data_cycles_are_collected_during_the_run(tmp_path, monkeypatch):
    """A frame asked for its side data is a reference cycle: without the writer's collections,
    every frame of the run (decoded and upscaled) stayed alive until Python's rare full collection."""
    make_clip(tmp_path / "a.mp4", frames=30)
    monkeypatch.setattr(video, "FRAME_GARBAGE", 1)  # collect after every frame
    alive = []
    write = video._Stages.write

    def counted(self):
        write(self)
        alive.append(sum(1 for o in gc.get_objects() if type(o) is av.VideoFrame))
    monkeypatch.setattr(video._Stages, "write", counted)
    gc.collect()
    gc.disable()  # as a run between Python's own full collections
    try:
        video.upscale_video(tmp_path / "a.mp4", tmp_path / "o.mp4", BicubicUpscaler(2))
    finally:
        gc.enable()
    assert alive and alive[0] < 10  # not the ~60 frames of the run
