"""Review s8: video files as phones, screen recorders and downloads leave them (tiny clips made
here with PyAV): a file cut at half its bytes (an interrupted download or copy) was upscaled to
half its length without a word; an MP4 cut before its index (moov, written last) said only "not a
video file, or it is damaged"."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from upsample import cli
from upsample.media.video import _mp4_without_index

BICUBIC = ["--model", "bicubic", "--scale", "2"]


def _clip(path, n=40, *, audio_seconds=None, options=None, first=0):
    """An n-frame 32x32 H.264 clip at 25 fps (a key frame every 5) from frame time `first`, with
    AAC sound of `audio_seconds` (None: none) from 0."""
    out = av.open(str(path), "w", options=options or {})
    v = out.add_stream("libx264", rate=25)
    v.width, v.height, v.pix_fmt = 32, 32, "yuv420p"
    v.codec_context.options = {"g": "5"}
    a = out.add_stream("aac", rate=48000) if audio_seconds else None
    if a is not None:
        a.layout = "mono"
    for i in range(n):
        img = np.random.default_rng(i).integers(0, 255, (32, 32, 3), np.uint8)  # big packets
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts, frame.time_base = first + i, Fraction(1, 25)
        out.mux(v.encode(frame))
    out.mux(v.encode())
    for k in range(int((audio_seconds or 0) * 48000) // 1024):
        f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        f.sample_rate, f.pts, f.time_base = 48000, k * 1024, Fraction(1, 48000)
        out.mux(a.encode(f))
    if a is not None:
        out.mux(a.encode())
    out.close()


def _cut_in_half(src, dst):
    data = src.read_bytes()
    dst.write_bytes(data[:len(data) // 2])


def _frames(path) -> int:
    """The frames of `path` that decode (a cut file's last packet is partial)."""
    n = 0
    with av.open(str(path)) as c:
        for packet in c.demux(video=0):
            try:
                n += len(packet.decode())
            except av.InvalidDataError:
                continue
    return n


@pytest.mark.parametrize("name, options", [("clip.mkv", None), ("clip.webm", None),
                                           ("clip.mp4", {"movflags": "faststart"})])
def test_a_file_cut_at_half_its_bytes_is_said_cut_short(tmp_path, capsys, name, options):
    """A download or copy cut off: the header (Matroska's DURATION tag, a fast-start MP4's
    index) says 1.6 s, the frames stop near 0.8 s; the run wrote the frames that are there and
    said nothing (its progress stopped at 51 %)."""
    whole, cut, dst = tmp_path / f"whole_{name}", tmp_path / name, tmp_path / "out.mkv"
    codec = ["--codec", "libx264"]
    if name.endswith(".webm"):
        src = tmp_path / "h264.mkv"
        _clip(src)
        assert cli.main(["video", str(src), "-o", str(whole), *BICUBIC]) == 0  # VP9 in WebM
    else:
        _clip(whole, options=options)
    _cut_in_half(whole, cut)
    capsys.readouterr()
    assert cli.main(["video", str(cut), "-o", str(dst), *BICUBIC, *codec]) == 0
    err = capsys.readouterr().err
    assert "cut short" in err and "its header says 1.60 s" in err
    assert 0 < _frames(dst) == _frames(cut) < 40


@pytest.mark.parametrize("args", [[], ["--start", "0.2", "--duration", "0.4"]])
def test_a_whole_file_with_longer_sound_is_not_said_cut_short(tmp_path, capsys, args):
    """The sound going on after the picture (the container's duration is the sound's), or a
    window that ends before the video, is no cut."""
    src, dst = tmp_path / "clip.mkv", tmp_path / "out.mp4"
    _clip(src, 20, audio_seconds=2.0)
    assert cli.main(["video", str(src), "-o", str(dst), *BICUBIC, *args]) == 0
    assert "cut short" not in capsys.readouterr().err


def test_a_whole_mp4_is_not_said_cut_short(tmp_path, capsys):
    src, dst = tmp_path / "clip.mp4", tmp_path / "out.mkv"
    _clip(src, 20, audio_seconds=1.5)
    assert cli.main(["video", str(src), "-o", str(dst), *BICUBIC]) == 0
    assert "cut short" not in capsys.readouterr().err


def test_an_mp4_cut_before_its_index_says_so(tmp_path, capsys):
    """A phone's recording stopped by a crash or a full card, or an MP4 download cut off: its
    moov (written at the end) is missing, and the message was "not a video file, or it is damaged"."""
    whole, cut = tmp_path / "whole.mp4", tmp_path / "cut.mp4"
    _clip(whole, audio_seconds=1.0)
    _cut_in_half(whole, cut)
    assert cli.main(["video", str(cut), "-o", str(tmp_path / "out.mp4"), *BICUBIC]) != 0
    err = capsys.readouterr().err
    assert "no index (moov box)" in err and "Traceback" not in err
    assert not (tmp_path / "out.mp4").exists()


def test_only_an_mp4_without_its_moov_is_told_so(tmp_path):
    whole, text = tmp_path / "whole.mp4", tmp_path / "notes.mp4"
    _clip(whole, 5)
    text.write_bytes(b"this is not a video at all\n" * 10)
    cut = tmp_path / "cut.mp4"
    _cut_in_half(whole, cut)
    assert _mp4_without_index(cut)
    assert not _mp4_without_index(whole)
    assert not _mp4_without_index(text)
    assert not _mp4_without_index(tmp_path / "missing.mp4")


def test_an_empty_file_is_said_empty(tmp_path, capsys):
    """A failed export or download leaves 0 bytes: "not a video file, or it is damaged (Invalid
    data found when processing input)" did not say what was wrong."""
    src = tmp_path / "export.mov"
    src.write_bytes(b"")
    assert cli.main(["video", str(src), "-o", str(tmp_path / "out.mp4"), *BICUBIC]) != 0
    assert "is empty (0 bytes)" in capsys.readouterr().err


def test_a_file_cut_before_its_first_picture_says_so(tmp_path, capsys):
    """A fast-start MP4 (index first) cut before its first picture: FFmpeg found no pixel format,
    and the message was "codec 'h264' is not supported here"."""
    whole, cut = tmp_path / "whole.mp4", tmp_path / "cut.mp4"
    _clip(whole, options={"movflags": "faststart"})
    cut.write_bytes(whole.read_bytes()[:1500])
    assert cli.main(["video", str(cut), "-o", str(tmp_path / "out.mp4"), *BICUBIC]) != 0
    err = capsys.readouterr().err
    assert "no h264 picture in it could be read" in err and "not supported" not in err


def test_an_mp4_cut_inside_its_index_says_so(tmp_path):
    whole, cut = tmp_path / "whole.mp4", tmp_path / "cut.mp4"
    _clip(whole, 5, options={"movflags": "faststart"})
    cut.write_bytes(whole.read_bytes()[:100])  # ftyp, then the first bytes of moov
    assert _mp4_without_index(cut)


def test_a_matroska_video_that_starts_late_is_not_said_cut_short(tmp_path, capsys):
    """Matroska's DURATION tag is the video's end time (3.4 s for 10 frames from 3 s), not its
    length: added to the start, the whole file read as cut short."""
    src, dst = tmp_path / "late.mkv", tmp_path / "out.mkv"
    _clip(src, 10, audio_seconds=4.0, first=75)
    assert cli.main(["video", str(src), "-o", str(dst), *BICUBIC]) == 0
    assert "cut short" not in capsys.readouterr().err
    assert _frames(dst) == 10


def test_a_wmv_output_is_windows_media_video_with_every_frame_in_order(tmp_path):
    """.wmv/.asf: WMV2 (H.264 in ASF was read back a frame late, two frames at one time)."""
    import numpy as np
    src = tmp_path / "in.mp4"
    with av.open(str(src), "w") as c:
        v = c.add_stream("libx264", rate=25)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        for i in range(10):
            for p in v.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 20, np.uint8), format="rgb24")):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
    out = tmp_path / "out.wmv"
    assert cli.main(["video", str(src), "-o", str(out), "--model", "bicubic", "--scale", "2"]) == 0
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.name == "wmv2"
        times = [float(f.time) for f in c.decode(video=0)]
    assert len(times) == 10 and all(b - a > 0.03 for a, b in zip(times, times[1:]))


def test_a_raw_av1_stream_is_a_video_not_a_tga_still(tmp_path):
    """Pillow guessed the headerless .obu as a 2080x3890 TGA: it was refused as a still image."""
    import numpy as np
    src = tmp_path / "x.obu"
    with av.open(str(src), "w") as c:
        s = c.add_stream("libsvtav1", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(6):
            for p in s.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 30, np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    out = tmp_path / "y.mkv"
    assert cli.main(["video", str(src), "-o", str(out), "--model", "bicubic", "--scale", "2"]) == 0
    with av.open(str(out)) as c:
        assert len(list(c.decode(video=0))) == 6
