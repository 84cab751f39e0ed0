"""Review s7: video files as cameras, phones, screen recorders and editors write them (tiny clips
made here with PyAV): H.264 into AVI (which stores no presentation times), a 10-bit input into a
container no 10-bit delivery codec goes into (.m4v), an iPhone's QuickTime metadata keys."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from upsample import cli
from upsample.media.video import choose_encoding


def _clip(path, n=12, *, bframes=True, metadata=None, options=None):
    """An n-frame 48x32 H.264 clip at 25 fps (B-frames unless told) with AAC sound as long."""
    out = av.open(str(path), "w", options=options or {})
    out.metadata.update(metadata or {})
    v = out.add_stream("libx264", rate=25)
    v.width, v.height, v.pix_fmt = 48, 32, "yuv420p"
    v.codec_context.options = {"bf": "3" if bframes else "0"}
    a = out.add_stream("aac", rate=48000)
    a.layout = "stereo"
    for i in range(n):
        img = np.zeros((32, 48, 3), np.uint8)
        img[:, (i * 4) % 48] = 255
        img[..., 1] = (i * 20) % 256
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts, frame.time_base = i, Fraction(1, 25)
        out.mux(v.encode(frame))
    out.mux(v.encode())
    for k in range(n * 48000 // 25 // 1024):
        tone = np.tile(np.sin(np.arange(1024) / 9 + k).astype(np.float32) * 0.2, (2, 1))
        f = av.AudioFrame.from_ndarray(tone, format="fltp", layout="stereo")
        f.sample_rate, f.pts, f.time_base = 48000, k * 1024, Fraction(1, 48000)
        out.mux(a.encode(f))
    out.mux(a.encode())
    out.close()


def _times(path):
    with av.open(str(path)) as c:
        return [round(f.time, 4) for f in c.decode(video=0)]


def test_h264_in_avi_reads_back_in_order_and_without_a_hole(tmp_path):
    """AVI keeps only the order of frames: x264's B-frames came back at the times of their
    places in the file (out of order), and the AAC's priming (sound before 0) made the muxer move
    every frame but the first one frame on (a hole after the first frame)."""
    src, dst = tmp_path / "phone.mp4", tmp_path / "out.avi"
    _clip(src, 8)
    assert cli.main(["video", str(src), "-o", str(dst), "--model", "bicubic", "--scale", "2"]) == 0
    times = _times(dst)
    assert len(times) == 8
    steps = {round(b - a, 4) for a, b in zip(times, times[1:])}
    assert steps == {0.04}  # each frame 1/25 s after the one before: in order, no hole
    with av.open(str(dst)) as c:
        assert [int(f.pict_type) for f in c.decode(video=0)].count(3) == 0  # no B-frames


@pytest.mark.parametrize("ext", [".m4v", ".3gp"])
def test_a_10_bit_input_where_no_10_bit_delivery_codec_fits_is_written_8_bit(ext):
    """The iPod/3GP muxers take no HEVC or AV1: the note said "written as 8-bit libx264", and the
    file was 10-bit H.264 (High 10), which iPhones, browsers and TVs do not play."""
    codec, pix_fmt, notes = choose_encoding(Path("out" + ext), "yuv420p10le")
    assert (codec, pix_fmt) == ("libx264", "yuv420p")
    assert any("8-bit libx264" in n for n in notes)
    assert choose_encoding(Path("out.mp4"), "yuv420p10le")[:2] == ("libx265", "yuv420p10le")


def test_a_10_bit_input_into_m4v_plays_as_8_bit(tmp_path):
    src, dst = tmp_path / "hdr.mkv", tmp_path / "out.m4v"
    with av.open(str(src), "w") as out:
        v = out.add_stream("ffv1", rate=25)
        v.width, v.height, v.pix_fmt = 48, 32, "yuv420p10le"
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(np.full((32, 48, 3), 40 * i, np.uint8), format="rgb24")
            frame = frame.reformat(format="yuv420p10le")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            out.mux(v.encode(frame))
        out.mux(v.encode())
    assert cli.main(["video", str(src), "-o", str(dst), "--model", "bicubic", "--scale", "2"]) == 0
    with av.open(str(dst)) as c:
        frames = list(c.decode(video=0))
    assert len(frames) == 3 and {f.format.name for f in frames} == {"yuv420p"}


@pytest.mark.parametrize("ext", [".mov", ".mp4"])
def test_a_phones_quicktime_keys_are_kept(tmp_path, ext):
    """An iPhone's make, model, place and capture date (com.apple.quicktime.* keys) and an Android
    phone's com.android.* keys were dropped from a .mov/.mp4 output without a word: FFmpeg's MP4
    muxers write such keys only as QuickTime metadata tags."""
    keys = {"com.apple.quicktime.make": "Apple", "com.apple.quicktime.model": "iPhone 15",
            "com.apple.quicktime.location.ISO6709": "+48.8584+002.2945+035.000/",
            "com.apple.quicktime.creationdate": "2024-05-01T12:00:00+0200",
            "com.android.version": "14", "com.android.capture.fps": "240.000000"}
    src, dst = tmp_path / "IMG_0001.MOV", tmp_path / f"out{ext}"
    _clip(src, 4, bframes=False, metadata={**keys, "creation_time": "2024-05-01T10:00:00.000000Z"},
          options={"movflags": "use_metadata_tags"})
    assert cli.main(["video", str(src), "-o", str(dst), "--model", "bicubic", "--scale", "2"]) == 0
    with av.open(str(dst)) as c:
        meta = dict(c.metadata)
        assert len(list(c.decode(video=0))) == 4
    assert {k: meta.get(k) for k in keys} == keys
    assert meta.get("creation_time", "").startswith("2024-05-01T10:00:00")


@pytest.mark.parametrize("ext, kept", [(".ts", False), (".m4v", False), (".mov", True), (".mkv", True)])
def test_a_timecode_track_is_said_kept_only_where_the_output_keeps_it(tmp_path, capsys, ext, kept):
    """A camera's MOV timecode track: the note said "kept as the timecode" also for .ts and .m4v,
    whose muxers store no timecode."""
    src, dst = tmp_path / "A001C002.mov", tmp_path / f"out{ext}"
    out = av.open(str(src), "w")
    v = out.add_stream("mpeg4", rate=25)
    v.width, v.height, v.pix_fmt = 48, 32, "yuv420p"
    v.metadata["timecode"] = "10:00:00:00"
    for i in range(12):
        frame = av.VideoFrame.from_ndarray(np.full((32, 48, 3), 20 * i, np.uint8), format="rgb24")
        frame.pts, frame.time_base = i, Fraction(1, 25)
        out.mux(v.encode(frame))
    out.mux(v.encode())
    out.close()
    assert cli.main(["video", str(src), "-o", str(dst), "--model", "bicubic", "--scale", "2"]) == 0
    err = capsys.readouterr().err
    assert ("kept as the timecode 10:00:00:00" in err) is kept
    assert (f"(10:00:00:00) cannot go into {ext}: dropped" in err) is not kept
    with av.open(str(dst)) as c:
        tags = {k.lower(): val for s in (c, *c.streams) for k, val in s.metadata.items()}
    assert (tags.get("timecode") == "10:00:00:00") is kept


@pytest.mark.skipif("libx265" not in av.codecs_available or "libsvtav1" not in av.codecs_available,
                    reason="needs libx265 and libsvtav1 in this FFmpeg")
def test_hdr10_static_metadata_reaches_a_webm_output(tmp_path):
    """A 10-bit HDR10 input into .webm is AV1 (SVT-AV1): its mastering display and light levels
    were lost (only x265 was given them), and HDR TVs tone-map by them."""
    from test_video_containers import hdr10_clip
    from upsample.media.video import hdr10_metadata
    src, dst = hdr10_clip(tmp_path / "hdr.mkv"), tmp_path / "out.webm"
    assert cli.main(["video", str(src), "-o", str(dst), "--model", "bicubic", "--scale", "2"]) == 0

    def first(path):
        with av.open(str(path)) as c:
            return next(c.decode(video=0))
    out = first(dst)
    assert out.color_trc == 16 and out.color_primaries == 9
    assert hdr10_metadata(out) == hdr10_metadata(first(src)) == (
        "G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)L(10000000,1)", "1000,400")


def test_an_odd_output_side_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    """161x91 (4:4:4) at x3 is 483x273: H.264 in 4:2:0 cannot take it, which was found only
    after the model had loaded (and its quality gate had run)."""
    src = tmp_path / "odd.mkv"
    with av.open(str(src), "w") as c:
        v = c.add_stream("libx264", rate=25)
        v.width, v.height, v.pix_fmt = 161, 91, "yuv444p"
        for i in range(2):
            c.mux(v.encode(av.VideoFrame.from_ndarray(np.full((91, 161, 3), 40 * i, np.uint8), format="rgb24")))
        c.mux(v.encode())
    from upsample.inference import api
    monkeypatch.setattr(api, "make_upscaler", lambda *a, **k: pytest.fail("the model was loaded"))
    assert cli.main(["video", str(src), "-o", str(tmp_path / "o.mp4"), "--model", "espcn-x3"]) == 2
    err = capsys.readouterr().err
    assert "cannot encode 483x273 frames" in err and not (tmp_path / "o.mp4").exists()
