"""Review s6: video files as cameras, phones, recorders and the web make them (tiny clips made
here with PyAV): a frame size that changes midway, a rotation the output cannot store, repeated
timestamps, album art, a colon in a file name, raw .h264 cut, a GIF's hold and an MP4's dts-step
durations in MP4 output, a raw Motion JPEG stream, a TS whose picture starts late."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from upsample import cli


def _picture(i, w, h):
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None]
    img[..., 1] = (i * 9) % 256
    img[: h // 4, : w // 4] = 255
    return img


def _packets(codec, w, h, n, pix_fmt="yuv420p"):
    cc = av.CodecContext.create(codec, "w")
    cc.width, cc.height, cc.pix_fmt, cc.time_base, cc.framerate = w, h, pix_fmt, Fraction(1, 25), 25
    packets = []
    for i in range(n):
        frame = av.VideoFrame.from_ndarray(_picture(i, w, h), format="rgb24").reformat(format=pix_fmt)
        frame.pts = i
        packets += cc.encode(frame)
    return packets + cc.encode(None)


def _mux(path, codec, size, pix_fmt, packets, pts, time_base):
    out = av.open(str(path), "w")
    s = out.add_stream(codec, rate=25)
    s.width, s.height, s.pix_fmt = *size, pix_fmt
    s.time_base = time_base
    for p, t in zip(packets, pts):
        q = av.Packet(bytes(p))
        q.pts = q.dts = t
        q.time_base, q.stream, q.is_keyframe = time_base, s, p.is_keyframe
        out.mux(q)
    out.close()


def _x264_clip(path, n, *, fmt=None, rotation=None):
    """An n-frame 48x32 H.264 clip at 25 fps (in `fmt`, e.g. a raw "h264" stream)."""
    out = av.open(str(path), "w", format=fmt)
    v = out.add_stream("libx264", rate=25)
    v.width, v.height, v.pix_fmt = 48, 32, "yuv420p"
    if rotation is not None:
        v.set_display_rotation(rotation)
    for i in range(n):
        frame = av.VideoFrame.from_ndarray(_picture(i, 48, 32), format="rgb24")
        frame.pts, frame.time_base = i, Fraction(1, 25)
        out.mux(v.encode(frame))
    out.mux(v.encode())
    out.close()


def _frames(path):
    with av.open(str(path)) as c:
        return list(c.decode(video=0))


@pytest.mark.parametrize("model", [["--model", "espcn-x3"], ["--model", "bicubic", "--scale", "3", "--batch", "2"]])
def test_a_frame_size_that_changes_midway_is_scaled_to_the_first(tmp_path, capsys, model):
    """A WebRTC/MediaRecorder WebM changes size midway: the Y path raised a numpy broadcast
    error (a traceback), the RGB path with --batch 2 could not stack the frames."""
    src, dst = tmp_path / "rec.webm", tmp_path / "out.mp4"
    packets = _packets("libvpx-vp9", 48, 32, 6) + _packets("libvpx-vp9", 32, 24, 6)
    _mux(src, "libvpx-vp9", (48, 32), "yuv420p", packets, range(12), Fraction(1, 25))
    assert {(f.width, f.height) for f in _frames(src)} == {(48, 32), (32, 24)}
    assert cli.main(["video", str(src), "-o", str(dst), *model]) == 0
    err = capsys.readouterr().err
    assert "frame size changes" in err and "Traceback" not in err
    frames = _frames(dst)
    assert len(frames) == 12 and {(f.width, f.height) for f in frames} == {(144, 96)}


@pytest.mark.parametrize("ext, kept", [(".avi", False), (".ts", False), (".mkv", True), (".mp4", True)])
def test_a_rotation_the_output_cannot_store_is_said(tmp_path, capsys, ext, kept):
    """A phone's portrait video in .avi/.ts lost its rotation without a word (players showed it
    on its side); MP4 and Matroska keep it."""
    src, dst = tmp_path / "phone.mp4", tmp_path / f"out{ext}"
    _x264_clip(src, 10, rotation=90)
    assert cli.main(["video", str(src), "-o", str(dst), "--model", "bicubic", "--scale", "2"]) == 0
    err = capsys.readouterr().err
    assert ("rotated by 90" in err) is not kept
    assert _frames(dst)[0].rotation == (90 if kept else 0)


@pytest.mark.parametrize("ext", [".mp4", ".mkv"])
def test_frames_that_repeat_a_timestamp_are_dropped_with_a_note(tmp_path, capsys, ext):
    """A webcam capture repeats a time: MP4's muxer failed the whole run ("Invalid argument"),
    Matroska wrote two frames at one time."""
    src, dst = tmp_path / "cam.mkv", tmp_path / f"out{ext}"
    times = [0, 40, 80, 80, 120, 160, 160, 200]
    _mux(src, "mjpeg", (48, 32), "yuvj420p", _packets("mjpeg", 48, 32, 8, "yuvj420p"), times, Fraction(1, 1000))
    assert len(_frames(src)) == 8
    assert cli.main(["video", str(src), "-o", str(dst), "--model", "bicubic", "--scale", "2"]) == 0
    err = capsys.readouterr().err
    assert "2 frame(s) of the input had the time of the frame before" in err
    out_times = [round(f.time, 3) for f in _frames(dst)]
    assert out_times == [0.0, 0.04, 0.08, 0.12, 0.16, 0.2]


def test_audio_with_a_cover_picture_is_no_video(tmp_path, capsys):
    """An MP3 with its album art: the picture was 'upscaled' into a one-frame MP4 that decoded
    to no frame at all."""
    src, dst = tmp_path / "song.mp3", tmp_path / "out.mp4"
    out = av.open(str(src), "w")
    a = out.add_stream("libmp3lame", rate=44100)
    a.layout = "stereo"
    cover = out.add_stream("mjpeg")
    cover.width = cover.height = 32
    cover.pix_fmt, cover.disposition = "yuvj420p", av.stream.Disposition.attached_pic
    cc = av.CodecContext.create("mjpeg", "w")
    cc.width = cc.height = 32
    cc.pix_fmt, cc.time_base = "yuvj420p", Fraction(1, 25)
    picture = av.VideoFrame.from_ndarray(_picture(0, 32, 32), format="rgb24").reformat(format="yuvj420p")
    jpeg = bytes(cc.encode(picture)[0])
    for k in range(10):
        tone = np.zeros((2, 1152), np.float32)
        frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = 44100, k * 1152, Fraction(1, 44100)
        out.mux(a.encode(frame))
        if k == 0:
            p = av.Packet(jpeg)
            p.stream, p.pts, p.dts, p.time_base, p.is_keyframe = cover, 0, 0, Fraction(1, 90000), True
            out.mux(p)
    out.mux(a.encode())
    out.close()
    with av.open(str(src)) as c:
        assert c.streams.video and c.streams.video[0].disposition & av.stream.Disposition.attached_pic
    assert cli.main(["video", str(src), "-o", str(dst), "--model", "bicubic", "--scale", "2"]) == 2
    err = capsys.readouterr().err
    assert "audio with a cover picture" in err and "Traceback" not in err
    assert not dst.exists() and not list(tmp_path.glob("*part*"))


def test_a_file_name_with_a_colon_is_read_as_a_file(tmp_path, capsys, monkeypatch):
    """`take:2.mp4` was "Protocol not found" (FFmpeg read "take" as a URL scheme)."""
    monkeypatch.chdir(tmp_path)
    packets = _packets("libx264", 48, 32, 5)
    _mux(tmp_path / "take:2.mkv", "libx264", (48, 32), "yuv420p", packets, range(5), Fraction(1, 25))
    assert cli.main(["video", "take:2.mkv", "-o", "out:2.mkv", "--model", "bicubic", "--scale", "2"]) == 0
    assert "Protocol not found" not in capsys.readouterr().err
    assert len(_frames(tmp_path / "out:2.mkv")) == 5


def test_a_raw_h264_stream_can_be_cut(tmp_path, capsys):
    """A camera/DVR's raw .h264 cannot seek: --start failed with "Operation not permitted: check
    that path" (its seek's EPERM) and left nothing to read."""
    src, dst = tmp_path / "dvr.h264", tmp_path / "out.mp4"
    _x264_clip(src, 25, fmt="h264")
    args = ["video", str(src), "-o", str(dst), "--model", "bicubic", "--scale", "2", "--start", "0.5", "--duration", "0.2"]
    assert cli.main(args) == 0, capsys.readouterr().err
    assert len(_frames(dst)) == 5


@pytest.mark.parametrize("ext", [".mp4", ".mov", ".mkv"])
def test_a_gifs_closing_hold_survives_b_frames_in_mp4(tmp_path, ext):
    """With B-frames the last packet x264 gives is not the last frame: MP4 ended the media
    there, and a GIF's closing 0.5 s hold read 0.65 s of 1.05 s."""
    from PIL import Image

    src, dst = tmp_path / "a.gif", tmp_path / f"out{ext}"
    def picture(i):  # x264 puts the last frame before two B-frames in decode order
        img = np.zeros((91, 161, 3), np.uint8)
        img[..., 0] = np.linspace(0, 255, 161, dtype=np.uint8)[None]
        img[..., 1] = np.linspace(0, 255, 91, dtype=np.uint8)[:, None]
        img[..., 2] = (i * 7) % 256
        img[:22, :40] = 255
        return Image.fromarray(img)

    frames = [picture(i) for i in range(8)]
    frames[0].save(src, save_all=True, append_images=frames[1:], duration=[50, 100, 50, 200, 50, 50, 50, 500], loop=0)
    assert cli.main(["video", str(src), "-o", str(dst), "--model", "bicubic", "--scale", "2"]) == 0
    with av.open(str(dst)) as c:
        assert c.duration / 1e6 == pytest.approx(1.05, abs=0.02)
        assert [round(f.time, 2) for f in c.decode(video=0)] == [0.0, 0.05, 0.15, 0.2, 0.4, 0.45, 0.5, 0.55]


def test_an_mp4_inputs_frame_durations_do_not_lengthen_the_output(tmp_path):
    """An MP4 input's frame durations are its dts steps: with B-frames and a gap, the last frame
    had 0.43 s; held to its end, the output ran 1.5 s where the input ran 1.1 s."""
    src, dst = tmp_path / "vfr.mp4", tmp_path / "out.mp4"
    out = av.open(str(src), "w")
    v = out.add_stream("libx264", rate=30)
    v.width, v.height, v.pix_fmt = 48, 32, "yuv420p"
    for i, p in enumerate([0, 1, 2, 3, 5, 8, 9, 10, 14, 15, 16, 17, 30, 31, 32]):
        frame = av.VideoFrame.from_ndarray(_picture(i, 48, 32), format="rgb24")
        frame.pts, frame.time_base = p, Fraction(1, 30)
        out.mux(v.encode(frame))
    out.mux(v.encode())
    out.close()
    with av.open(str(src)) as c:
        length = c.duration / 1e6
    assert cli.main(["video", str(src), "-o", str(dst), "--model", "bicubic", "--scale", "2"]) == 0
    with av.open(str(dst)) as c:
        assert c.duration / 1e6 == pytest.approx(length, abs=0.02)


def test_an_ip_cameras_motion_jpeg_stream_is_a_video(tmp_path, capsys):
    """A raw .mjpeg (JPEGs back to back) was refused as a still image: Pillow reads its first."""
    src, dst = tmp_path / "cam.mjpeg", tmp_path / "out.mp4"
    out = av.open(str(src), "w", format="mjpeg")
    v = out.add_stream("mjpeg", rate=25)
    v.width, v.height, v.pix_fmt = 48, 32, "yuvj420p"
    for i in range(6):
        frame = av.VideoFrame.from_ndarray(_picture(i, 48, 32), format="rgb24").reformat(format="yuvj420p")
        frame.pts, frame.time_base = i, Fraction(1, 25)
        out.mux(v.encode(frame))
    out.mux(v.encode())
    out.close()
    assert cli.main(["video", str(src), "-o", str(dst), "--model", "bicubic", "--scale", "2"]) == 0, \
        capsys.readouterr().err
    assert len(_frames(dst)) == 6
    still = tmp_path / "still.jpg"  # a JPEG file is still refused
    from PIL import Image
    Image.fromarray(_picture(0, 48, 32)).save(still)
    assert cli.main(["video", str(still), "-o", str(tmp_path / "s.mp4"), "--model", "bicubic", "--scale", "2"]) == 2
    assert "still image" in capsys.readouterr().err


def test_a_picture_that_starts_late_in_a_ts_is_found(tmp_path, capsys):
    """A TS recording whose picture starts after 8 s of sound: FFmpeg's first 5 s told it no
    size or pixel format, and the file was refused as "codec 'h264' is not supported here"."""
    src, dst = tmp_path / "late.ts", tmp_path / "out.mkv"
    out = av.open(str(src), "w")
    a = out.add_stream("mp2", rate=48000)
    a.layout = "stereo"
    v = out.add_stream("libx264", rate=25)
    v.width, v.height, v.pix_fmt = 48, 32, "yuv420p"
    for k in range(int(9 * 48000 / 1152)):
        tone = np.repeat(0.2 * np.sin(np.arange(1152, dtype=np.float32) / 7), 2)[None]
        sound = av.AudioFrame.from_ndarray(tone, format="flt", layout="stereo")
        sound.sample_rate, sound.pts, sound.time_base = 48000, k * 1152, Fraction(1, 48000)
        out.mux(a.encode(sound))
        picture = int(k * 1152 / 48000 * 25)  # on the 25 fps grid, each once
        if picture >= 200 and picture != int((k - 1) * 1152 / 48000 * 25):
            frame = av.VideoFrame.from_ndarray(_picture(k, 48, 32), format="rgb24")
            frame.pts, frame.time_base = picture, Fraction(1, 25)
            out.mux(v.encode(frame))
    out.mux(a.encode())
    out.mux(v.encode())
    out.close()
    with av.open(str(src)) as c:
        assert c.streams.video[0].codec_context.format is None  # FFmpeg's usual look finds no picture
    assert cli.main(["video", str(src), "-o", str(dst), "--model", "bicubic", "--scale", "2"]) == 0, \
        capsys.readouterr().err
    frames = _frames(dst)
    assert len(frames) > 10 and frames[0].time == pytest.approx(8.0, abs=0.1)


def test_two_ts_recordings_joined_by_cat_play_one_after_the_other(tmp_path, capsys):
    """`cat a.ts b.ts`: the clock goes back at the join, and the muxer refused the run
    ("video processing failed: Invalid argument"); FFmpeg moves the second part on."""
    part, src, dst = tmp_path / "part.ts", tmp_path / "joined.ts", tmp_path / "out.mkv"
    out = av.open(str(part), "w")
    v = out.add_stream("libx264", rate=25)
    v.width, v.height, v.pix_fmt = 48, 32, "yuv420p"
    a = out.add_stream("mp2", rate=48000)
    a.layout = "stereo"
    for i in range(25):
        frame = av.VideoFrame.from_ndarray(_picture(i, 48, 32), format="rgb24")
        frame.pts, frame.time_base = i, Fraction(1, 25)
        out.mux(v.encode(frame))
    out.mux(v.encode())
    for k in range(int(48000 / 1152)):
        tone = np.repeat(0.2 * np.sin(np.arange(1152, dtype=np.float32) / 7), 2)[None]
        sound = av.AudioFrame.from_ndarray(tone, format="flt", layout="stereo")
        sound.sample_rate, sound.pts, sound.time_base = 48000, k * 1152, Fraction(1, 48000)
        out.mux(a.encode(sound))
    out.mux(a.encode())
    out.close()
    src.write_bytes(part.read_bytes() * 2)
    assert cli.main(["video", str(src), "-o", str(dst), "--model", "bicubic", "--scale", "2"]) == 0, \
        capsys.readouterr().err
    times = [f.time for f in _frames(dst)]
    assert len(times) == 50 and all(b > a for a, b in zip(times, times[1:]))
    assert times[-1] - times[0] == pytest.approx(49 / 25, abs=0.05)
    with av.open(str(dst)) as c:
        sound = [float(p.pts * p.time_base) for p in c.demux(audio=0) if p.size]
    assert all(b > a for a, b in zip(sound, sound[1:])) and sound[-1] > 1.9
