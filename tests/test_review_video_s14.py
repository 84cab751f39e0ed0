"""Video as camcorders and encoders leave it (review s14): an MPEG-TS recorded across its 33-bit
clock's wrap (its first second was lost in an MP4 output), and MP4 outputs whose last packet in
decode order is a B-frame (the stream's mean frame rate read 24.67 for 25 fps)."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from upsample import cli

W, H, FPS = 96, 64, 25


def _picture(i: int) -> np.ndarray:
    y, x = np.mgrid[0:H, 0:W]
    img = np.zeros((H, W, 3), np.uint8)
    img[..., 0] = (x * 255 // (W - 1) + i * 7) % 256
    img[..., 1] = y * 255 // (H - 1)
    img[..., 2] = ((x // 8 + y // 8 + i) % 2) * 200
    return img


def _clip(path, *, frames: int = 75, fmt: str | None = None, offset: float = 0.0) -> None:
    """libx264 with B-frames and AAC; every timestamp moved by `offset` seconds."""
    out = av.open(str(path), "w", format=fmt)
    v = out.add_stream("libx264", rate=FPS, options={"bf": "3"})
    v.width, v.height, v.pix_fmt = W, H, "yuv420p"
    a = out.add_stream("aac", rate=48000)
    a.layout = "stereo"

    def mux(packets):
        for p in packets:
            if offset and p.pts is not None:
                shift = int(round(offset / p.time_base))
                p.pts += shift
                p.dts = None if p.dts is None else p.dts + shift
            out.mux(p)
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(_picture(i), format="rgb24")
        frame.pts, frame.time_base = i, Fraction(1, FPS)
        mux(v.encode(frame))
    mux(v.encode(None))
    t = np.arange(1024) / 48000
    for k in range(int(frames / FPS * 48000 / 1024)):
        s = (0.3 * np.sin(2 * np.pi * 440 * (t + k * 1024 / 48000))).astype(np.float32)
        sound = av.AudioFrame.from_ndarray(np.stack([s, s]).reshape(1, -1), format="flt", layout="stereo")
        sound.sample_rate, sound.pts, sound.time_base = 48000, k * 1024, Fraction(1, 48000)
        mux(a.encode(sound))
    mux(a.encode(None))
    out.close()


def _frames_and_rate(path) -> tuple[int, Fraction, float]:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        times = [f.time for f in c.decode(video=0)]
        return len(times), v.average_rate, times[0]


def _last_decoded_packet_is_a_b_frame(path) -> bool:
    with av.open(str(path)) as c:
        packets = [p for p in c.demux(video=0) if p.size]
    return packets[-1].pts < max(p.pts for p in packets)


def test_an_mp4_output_keeps_the_inputs_mean_frame_rate_when_it_ends_on_a_b_frame(tmp_path):
    _clip(tmp_path / "in.mp4")
    for model, scale in (("bicubic", "2"), ("espcn-x3", "3")):
        out = tmp_path / f"out-{model}.mp4"
        assert cli.main(["video", str(tmp_path / "in.mp4"), "-o", str(out), "--model", model, "--scale", scale]) == 0
        n, rate, _ = _frames_and_rate(out)
        assert (n, rate) == (75, FPS), (model, n, rate, _last_decoded_packet_is_a_b_frame(out))


@pytest.mark.parametrize("ext", [".mp4", ".mkv"])
def test_a_transport_stream_across_its_clock_wrap_keeps_every_frame(tmp_path, ext):
    src = tmp_path / "cam.ts"
    _clip(src, fmt="mpegts", offset=2 ** 33 / 90000 - 1.0)  # recorded from 1 s before the wrap
    with av.open(str(src)) as c:
        assert c.start_time < 0  # FFmpeg counts the times before the wrap as negative
    out = tmp_path / f"out{ext}"
    assert cli.main(["video", str(src), "-o", str(out), "--model", "bicubic", "--scale", "2"]) == 0
    n, _, first = _frames_and_rate(out)
    assert n == 75 and 0 <= first < 0.1
    cut = tmp_path / f"cut{ext}"
    assert cli.main(["video", str(src), "-o", str(cut), "--model", "bicubic", "--scale", "2",
                     "--start", "1", "--duration", "1"]) == 0
    assert _frames_and_rate(cut)[0] == 25


def _late_sound_clip(path, codec: str) -> None:
    """2 s of picture and a 440 Hz tone from 0.5 s to the end (a camera's sound that starts late)."""
    out = av.open(str(path), "w")
    v = out.add_stream("libx264", rate=FPS)
    v.width, v.height, v.pix_fmt = W, H, "yuv420p"
    a = out.add_stream(codec, rate=48000)
    a.layout = "stereo"
    fmt = "s16" if codec.startswith("pcm") else "fltp"
    for i in range(2 * FPS):
        frame = av.VideoFrame.from_ndarray(_picture(i), format="rgb24")
        frame.pts, frame.time_base = i, Fraction(1, FPS)
        out.mux(v.encode(frame))
    out.mux(v.encode(None))
    t = np.arange(48000 * 3 // 2) / 48000
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    for k in range(0, len(t), 1024):
        part = tone[k:k + 1024]
        data = (np.stack([part, part]) * 32767).astype(np.int16).T.reshape(1, -1) if fmt == "s16" \
            else np.stack([part, part]).astype(np.float32)
        sound = av.AudioFrame.from_ndarray(data, format=fmt, layout="stereo")
        sound.sample_rate, sound.pts, sound.time_base = 48000, 24000 + k, Fraction(1, 48000)
        out.mux(a.encode(sound))
    out.mux(a.encode(None))
    out.close()


def test_sound_that_starts_late_keeps_its_time_in_avi_or_is_noted(tmp_path, capsys):
    """AVI stores no start time: the sound played from the first frame, 0.5 s early, silently."""
    _late_sound_clip(tmp_path / "pcm.mov", "pcm_s16le")
    assert cli.main(["video", str(tmp_path / "pcm.mov"), "-o", str(tmp_path / "pcm.avi"), "--model", "bicubic",
                     "--scale", "2"]) == 0
    with av.open(str(tmp_path / "pcm.avi")) as c:
        samples = np.concatenate([f.to_ndarray().reshape(-1, 2) for f in c.decode(audio=0)])
    loud = np.flatnonzero(np.abs(samples[:, 0]) > 1000)
    assert abs(loud[0] / 48000 - 0.5) < 0.002 and abs(len(samples) / 48000 - 2.0) < 0.03
    capsys.readouterr()
    _late_sound_clip(tmp_path / "aac.mp4", "aac")
    assert cli.main(["video", str(tmp_path / "aac.mp4"), "-o", str(tmp_path / "aac.avi"), "--model", "bicubic",
                     "--scale", "2"]) == 0
    err = capsys.readouterr().err
    assert "the sound starts 0.4" in err and "plays that much early" in err
