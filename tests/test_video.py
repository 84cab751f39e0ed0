"""Video inference: frames, fps, timestamps, untouched audio, Y-plane path, clips, failures (tiny)."""

from __future__ import annotations

import fractions

import av
import numpy as np
import pytest
import torch

from upsample import cli
from upsample.inference import video
from upsample.inference.tiler import fastest_batch
from upsample.inference.load import load_upscaler

W, H = 48, 32


def make_clip(path, *, seconds=5.0, fps=25, audio=True, pix_fmt="yuv420p", pts=None, crf=None,
              rotation=None, bt709=False, aspect=None):
    """A clip made here with PyAV: a moving bar over gradients, and a 440 Hz AAC tone."""
    c = av.open(str(path), "w")
    v = c.add_stream("libx264", rate=fps)
    v.width, v.height, v.pix_fmt = W, H, pix_fmt
    if crf is not None:
        v.codec_context.options = {"crf": str(crf)}
    if rotation is not None:
        v.set_display_rotation(rotation)
    if aspect is not None:
        v.codec_context.sample_aspect_ratio = aspect
    if bt709:
        v.codec_context.color_primaries = v.codec_context.color_trc = v.codec_context.colorspace = 1
    a = c.add_stream("aac", rate=48000) if audio else None
    if a is not None:
        a.layout = "stereo"
    pts = list(range(int(seconds * fps))) if pts is None else pts
    for i, p in enumerate(pts):
        img = np.zeros((H, W, 3), np.uint8)
        img[..., 0] = np.linspace(0, 255, W, dtype=np.uint8)[None]
        img[..., 1] = (i * 5) % 256
        img[:, (i * 2) % W] = 255
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts, frame.time_base = p, fractions.Fraction(1, fps)
        for pk in v.encode(frame):
            c.mux(pk)
    for pk in v.encode():
        c.mux(pk)
    if a is not None:
        t = np.arange(1024) / 48000
        for k in range(int(seconds * 48000 / 1024)):
            s = (0.3 * np.sin(2 * np.pi * 440 * (t + k * 1024 / 48000))).astype(np.float32)
            f = av.AudioFrame.from_ndarray(np.stack([s, s]).reshape(1, -1), format="flt", layout="stereo")
            f.sample_rate, f.pts, f.time_base = 48000, k * 1024, fractions.Fraction(1, 48000)
            for pk in a.encode(f):
                c.mux(pk)
        for pk in a.encode():
            c.mux(pk)
    c.close()


def info(path):
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = list(c.decode(video=0))
        meta = {"n": len(frames), "rate": v.average_rate, "size": (v.codec_context.width, v.codec_context.height),
                "times": [f.time for f in frames], "fmt": v.codec_context.format.name,
                "duration": c.duration}
    with av.open(str(path)) as c:
        meta["audio"] = [bytes(p) for p in c.demux(audio=0) if p.size] if c.streams.audio else []
    return meta, frames


def test_clip_with_audio_keeps_frames_fps_timestamps_and_audio_bytes(tmp_path):
    src, dst = tmp_path / "in.mp4", tmp_path / "out.mp4"
    make_clip(src)
    assert cli.main(["video", str(src), "-o", str(dst), "--model", "bicubic", "--scale", "2"]) == 0
    a, _ = info(src)
    b, _ = info(dst)
    assert b["n"] == a["n"] == 125
    assert b["rate"] == a["rate"] == 25
    assert b["size"] == (2 * W, 2 * H)
    assert b["times"] == pytest.approx(a["times"])
    assert len(a["audio"]) > 200 and b["audio"] == a["audio"]
    assert abs(b["duration"] - a["duration"]) <= av.time_base // 25  # within a frame
    assert b["fmt"] == "yuv420p"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4", "out.mp4"]  # no temp left


def test_variable_frame_rate_and_clip_window(tmp_path):
    src = tmp_path / "vfr.mkv"
    pts = [0, 1, 2, 4, 7, 8, 9, 13, 14, 20, 21, 22, 30, 31, 40, 41, 45, 50]
    make_clip(src, pts=pts, audio=False)
    dst = tmp_path / "vfr_x2.mkv"
    assert cli.main(["video", str(src), "-o", str(dst), "--model", "bicubic"]) == 0
    a, _ = info(src)
    b, _ = info(dst)
    assert b["times"] == pytest.approx(a["times"], abs=1e-3) and len(b["times"]) == len(pts)
    clip = tmp_path / "clip.mp4"
    make_clip(tmp_path / "long.mp4", seconds=4.0)
    assert cli.main(["video", str(tmp_path / "long.mp4"), "-o", str(clip), "--model", "bicubic",
                     "--start", "1", "--duration", "2"]) == 0
    c, _ = info(clip)
    assert c["n"] == 50 and c["times"][0] == pytest.approx(0.0, abs=0.02)
    assert 1.9 < sum(len(p) > 0 for p in c["audio"]) * 1024 / 48000 < 2.2  # audio of the window


def test_y_model_runs_on_the_luma_plane_without_rgb(tmp_path):
    """espcn-x2 on Y, chroma by libswscale; lossless x264 so the decoded output is what was encoded."""
    src, dst = tmp_path / "in.mkv", tmp_path / "out.mkv"
    make_clip(src, seconds=0.2, audio=False)
    assert cli.main(["video", str(src), "-o", str(dst), "--model", "espcn-x2", "--crf", "0"]) == 0
    _, fin = info(src)
    _, fout = info(dst)
    up = load_upscaler("espcn-x2")
    net = video.YPlaneUpscaler(up)
    for fi, fo in zip(fin, fout):
        yuv_in = fi.to_ndarray(format="yuv420p")
        yuv_out = fo.to_ndarray(format="yuv420p")
        y = torch.from_numpy(yuv_in[:H].astype(np.float32) / 255)[None, None]
        want_y = (net(y)[0, 0].clamp(0, 1) * 255).round().numpy()
        assert np.abs(yuv_out[:2 * H].astype(int) - want_y).max() <= 1
        # chroma: libswscale's bicubic, straight from the 4:2:0 planes
        want_uv = fi.reformat(width=2 * W, height=2 * H, interpolation="BICUBIC").to_ndarray()[2 * H:]
        assert np.abs(yuv_out[2 * H:].astype(int) - want_uv).max() <= 1


def test_ten_bit_input_keeps_its_pixel_format(tmp_path):
    src, dst = tmp_path / "in10.mkv", tmp_path / "out10.mkv"
    make_clip(src, seconds=0.2, audio=False, pix_fmt="yuv420p10le")
    assert cli.main(["video", str(src), "-o", str(dst), "--model", "espcn-x2"]) == 0
    b, frames = info(dst)
    assert b["fmt"] == "yuv420p10le" and b["size"] == (2 * W, 2 * H)
    assert frames[0].to_ndarray().max() > 255  # real 10-bit codes, not 8-bit ones


def test_rotation_and_colour_tags_are_kept(tmp_path):
    src, dst = tmp_path / "rot.mp4", tmp_path / "rot_x2.mp4"
    make_clip(src, seconds=0.2, audio=False, rotation=90, bt709=True)
    assert cli.main(["video", str(src), "-o", str(dst), "--model", "bicubic"]) == 0
    with av.open(str(dst)) as c:
        cc = c.streams.video[0].codec_context
        assert (cc.color_primaries, cc.color_trc, cc.colorspace) == (1, 1, 1)
        assert next(c.decode(video=0)).rotation == 90


def test_pixel_aspect_is_kept_or_its_loss_said(tmp_path, capsys):
    """Anamorphic input (DVD-style 8:9 pixels) keeps its aspect in MP4 and with H.264 in
    Matroska; VP9 in WebM cannot carry it through PyAV, and says so."""
    src = tmp_path / "dvd.mp4"
    make_clip(src, seconds=0.2, audio=False, aspect=fractions.Fraction(8, 9))
    for name, codec, kept in (("o.mp4", "libvpx-vp9", True), ("o.mkv", "libx264", True), ("o.webm", None, False)):
        dst = tmp_path / name
        assert cli.main(["video", str(src), "-o", str(dst), "--model", "bicubic"]
                        + (["--codec", codec] if codec else [])) == 0
        with av.open(str(dst)) as c:
            assert (c.streams.video[0].sample_aspect_ratio == fractions.Fraction(8, 9)) == kept, name
        assert ("pixels are not square (aspect 8:9)" in capsys.readouterr().err) != kept, name


def test_bad_inputs_one_line_and_no_output(tmp_path, capsys):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all\n" * 20)
    assert cli.main(["video", str(text), "-o", str(tmp_path / "o.mp4")]) == 2
    assert "not a video" in capsys.readouterr().err
    audio_only = tmp_path / "tone.m4a"
    c = av.open(str(audio_only), "w")
    a = c.add_stream("aac", rate=48000)
    f = av.AudioFrame.from_ndarray(np.zeros((1, 2048), np.float32), format="flt", layout="stereo")
    f.sample_rate, f.pts = 48000, 0
    for pk in list(a.encode(f)) + list(a.encode()):
        c.mux(pk)
    c.close()
    assert cli.main(["video", str(audio_only), "-o", str(tmp_path / "o.mp4")]) == 2
    assert "no video stream" in capsys.readouterr().err
    make_clip(tmp_path / "ok.mp4", seconds=0.2, audio=False)
    assert cli.main(["video", str(tmp_path / "ok.mp4"), "-o", str(tmp_path / "o.mp4"),
                     "--codec", "nosuchcodec"]) == 2
    assert "unknown video encoder" in capsys.readouterr().err
    assert cli.main(["video", str(tmp_path / "ok.mp4"), "-o", str(tmp_path / "o.mp4"),
                     "--model", "bicubic", "--start", "30"]) == 2
    assert "no video frames" in capsys.readouterr().err
    assert cli.main(["video", str(tmp_path / "ok.mp4"), "-o", str(tmp_path / "o.mp4"), "--batch", "0"]) == 2
    assert "--batch must be auto" in capsys.readouterr().err
    assert not (tmp_path / "o.mp4").exists()


def test_still_images_and_bad_output_locations_are_refused_before_any_work(tmp_path, capsys, monkeypatch):
    from PIL import Image
    Image.new("RGB", (W, H), (200, 10, 10)).save(tmp_path / "still.png")
    Image.new("RGB", (W, H)).save(tmp_path / "still.jpg")
    make_clip(tmp_path / "ok.mp4", seconds=0.2, audio=False)
    built = []
    monkeypatch.setattr("upsample.inference.api.make_upscaler", lambda *a, **k: built.append(a))
    for still in ("still.png", "still.jpg"):
        assert cli.main(["video", str(tmp_path / still), "-o", str(tmp_path / "o.mp4")]) == 2
        assert "is a still image, not a video: use `upsample image" in capsys.readouterr().err
    (tmp_path / "folder").mkdir()
    cases = {"folder": "is a folder", "o.png": ".png is not a video container",
             "o.xyz": ".xyz is not a video container", "noext": "has no extension"}
    for out, message in cases.items():
        assert cli.main(["video", str(tmp_path / "ok.mp4"), "-o", str(tmp_path / out)]) == 2
        assert message in capsys.readouterr().err
    assert not built and sorted(p.name for p in tmp_path.iterdir()) == ["folder", "ok.mp4", "still.jpg", "still.png"]


def test_batch_auto_is_one_frame_on_the_cpu_and_a_number_is_kept(tmp_path, capsys):
    src = tmp_path / "in.mp4"
    make_clip(src, seconds=0.2, audio=False)
    assert cli.main(["video", str(src), "-o", str(tmp_path / "a.mp4"), "--model", "espcn-x2"]) == 0
    assert "1 frame(s) per model call" in capsys.readouterr().out
    assert cli.main(["video", str(src), "-o", str(tmp_path / "b.mp4"), "--model", "espcn-x2",
                     "--batch", "3"]) == 0
    assert "3 frame(s) per model call" in capsys.readouterr().out


def test_fastest_batch_takes_the_least_time_per_frame():
    import time
    calls = []

    def run(n, fixed=0.02, per_frame=0.002):  # a device with a large cost per call
        calls.append(n)
        time.sleep(fixed + per_frame * n)
    assert fastest_batch(run, (1, 2, 4, 8), repeats=1) == 8
    assert calls == [1, 1, 2, 2, 4, 4, 8, 8]  # each warmed up once, then timed
    assert fastest_batch(lambda n: time.sleep(0.01 * n + (0.05 if n > 1 else 0)), (1, 2)) == 1


def test_frames_per_call_only_times_batches_that_fit(monkeypatch):
    """The GPU branch, run on the CPU: with memory for two frames only 1 and 2 are timed."""
    up = load_upscaler("espcn-rgb-x2", backend="torch")
    tiler = video.Tiler(up)
    assert video.frames_per_call(up, tiler, 24, 32, 3, np.uint8, (48, 64)) == 1  # the CPU: untimed
    monkeypatch.setattr(tiler, "plan_tile", lambda h, w, c, d, batch=1, reserved=0: 0 if batch <= 2 else 64)
    seen, real_call = [], type(up).__call__
    monkeypatch.setattr(type(up), "__call__", lambda self, x: seen.append(x.shape[0]) or real_call(self, x))
    assert video.frames_per_call(up, tiler, 24, 32, 3, np.uint8, (48, 64), timed=True) in (1, 2)
    assert set(seen) == {1, 2}
    monkeypatch.setattr(tiler, "plan_tile", lambda h, w, c, d, batch=1, reserved=0: 64)
    assert video.frames_per_call(up, tiler, 24, 32, 3, np.uint8, (48, 64), timed=True) == 1


def test_interrupt_leaves_no_output(tmp_path, monkeypatch):
    src, dst = tmp_path / "in.mp4", tmp_path / "out" / "o.mp4"
    make_clip(src, seconds=1.0)
    calls = []
    real = video._upscale_frames

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(video, "_upscale_frames", interrupted)
    assert cli.main(["video", str(src), "-o", str(dst), "--model", "bicubic"]) == 130
    assert list((tmp_path / "out").iterdir()) == []


def test_video_defaults_to_the_fastest_shipped_model_that_clearly_beats_bicubic():
    from upsample.inference.api import default_model, make_upscaler, shipped_scores
    for scale in (2, 3, 4):
        fast = default_model(scale, fastest=True)
        model_db, bicubic_db = shipped_scores(scale)[fast]
        assert fast.startswith("espcn-") and model_db - bicubic_db >= 1.0
        assert default_model(scale) == "vdsr"  # the best, for images
        assert make_upscaler(None, scale, backend="torch", fastest_default=True).name == fast


def test_frames_side_by_side_make_the_same_video_with_torch_on_one_thread(tmp_path, monkeypatch):
    """Where the runtime serves several threads at once (OpenVINO streams), frames are upscaled
    side by side: the same frames in the same order as one at a time; torch's glue around the
    network runs on one thread meanwhile (its spinning threads took the runtime's cores)."""
    src = tmp_path / "in.mp4"
    make_clip(src, seconds=0.4, audio=False)
    seen, real = [], video._upscale_frames
    monkeypatch.setattr(video, "_upscale_frames", lambda *a: seen.append(torch.get_num_threads()) or real(*a))
    threads, runs = torch.get_num_threads(), {}
    for side in (False, True):
        up = load_upscaler("espcn-x2", quiet=True)
        if not side:
            up.parallel = None  # a runtime without streams: one frame at a time
        else:  # two side by side even where OpenVINO would keep one stream (a 1-core machine)
            up.parallel = lambda streams=up.parallel: (streams()[0], 2)
        summary = video.upscale_video(src, tmp_path / f"{side}.mkv", up, crf=0)
        runs[side] = summary["workers"], [f.to_ndarray(format="yuv420p") for f in info(tmp_path / f"{side}.mkv")[1]]
    assert runs[False][0] == 1 and runs[True][0] == 2
    one, side = runs[False][1], runs[True][1]
    assert len(side) == len(one) == 10
    # the same frames in the same order (a thread count may change a float sum's last bit: 1 level)
    assert all(np.abs(a.astype(int) - b).max() <= 1 for a, b in zip(one, side))
    assert all(np.abs(a.astype(int) - b).max() > 1 for a, b in zip(one[1:], side[:-1]))
    assert set(seen) == {1} and torch.get_num_threads() == threads
