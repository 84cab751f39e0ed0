"""Review s9: outputs read back as players read them (tiny clips made here with PyAV, each frame's
number drawn as bars, a tone that starts at 0.2 s): H.264 in AVI played a frame late and AAC's
priming put the sound 21 ms behind; MXF put B-frames out of order, refused every audio encoder,
and dropped the frames past the sound's end; PCM in MPEG-TS came back as a data stream; closed
captions and a 3D layout were dropped without a word."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from upsample import cli

BICUBIC = ["--model", "bicubic", "--scale", "2"]
W, H = 64, 48


def _picture(k: int) -> np.ndarray:
    """A frame whose top band shows k in binary (a bright 8-pixel column for each 1 bit)."""
    img = np.full((H, W, 3), 60, np.uint8)
    img[24:] = np.random.default_rng(k).integers(40, 200, (H - 24, W, 3), np.uint8)
    for bit in range(8):
        if (k >> bit) & 1:
            img[:16, bit * 8:(bit + 1) * 8] = 235
    return img


def _number(frame, scale: int = 2) -> int:
    rgb = frame.to_ndarray(format="rgb24")
    return sum(1 << b for b in range(8)
               if rgb[2 * scale:14 * scale, (b * 8 + 2) * scale:(b * 8 + 6) * scale].mean() > 150)


def _clip(path, n=12, *, first=0, acodec="aac", seconds=None, vopts=None, packet_prefix=b""):
    """n frames at 25 fps from frame time `first` (x264 with B-frames), and sound (silent, a tone
    from 0.2 s) from 0 for `seconds` (default: as long as the frames)."""
    out = av.open(str(path), "w")
    v = out.add_stream("libx264", rate=25)
    v.width, v.height, v.pix_fmt = W, H, "yuv420p"
    v.codec_context.options = {"bf": "2", "g": "12", **(vopts or {})}
    a = out.add_stream(acodec, rate=48000) if acodec else None
    if a is not None:
        a.layout = "stereo"
    packets = []
    for i in range(n):
        frame = av.VideoFrame.from_ndarray(_picture(i), format="rgb24")
        frame.pts, frame.time_base = first + i, Fraction(1, 25)
        packets += v.encode(frame)
    packets += v.encode()
    for p in packets:
        if packet_prefix:
            p = _prefixed(p, packet_prefix, v)
        out.mux(p)
    if a is not None:
        total, t = int((seconds or n / 25) * 48000), 0
        size = a.codec_context.frame_size or 1024
        while t < total:
            tt = (t + np.arange(min(size, total - t))) / 48000
            tone = np.where(tt >= 0.2, 0.3 * np.sin(2 * np.pi * 440 * tt), 0).astype(np.float32)
            f = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
            f.sample_rate, f.pts, f.time_base = 48000, t, Fraction(1, 48000)
            out.mux(a.encode(f))
            t += len(tt)
        out.mux(a.encode())
    out.close()


def _prefixed(packet, prefix: bytes, stream):
    """`packet` (Annex B, as x264 gives it; the MP4 muxer converts) with a NAL unit in front."""
    p = av.Packet(b"\x00\x00\x00\x01" + prefix + bytes(packet))
    p.pts, p.dts, p.duration, p.time_base = packet.pts, packet.dts, packet.duration, packet.time_base
    p.is_keyframe, p.stream = packet.is_keyframe, stream
    return p


def _read(path, scale=2):
    """(frame times, frame numbers, time of the tone's onset, audio codec) as FFmpeg plays it."""
    times, numbers, onset, acodec = [], [], None, None
    with av.open(str(path)) as c:
        acodec = c.streams.audio[0].codec_context.name if c.streams.audio else None
        for packet in c.demux():
            for f in packet.decode():
                if packet.stream.type == "video":
                    times.append(float(f.time))
                    numbers.append(_number(f, scale))
                elif packet.stream.type == "audio" and onset is None:
                    x = np.abs(f.to_ndarray().astype(np.float64))
                    x = x / 32768 if f.format.name.startswith("s16") else x
                    peak = x.max(axis=0) if f.format.is_planar else x.reshape(f.samples, -1).max(axis=1)
                    hit = np.nonzero(peak > 0.15)[0]
                    if len(hit):
                        onset = float(f.time) + hit[0] / f.sample_rate
    return times, numbers, onset, acodec


def _upscale(src, dst, *args):
    assert cli.main(["video", str(src), "-o", str(dst), *BICUBIC, *args]) == 0


@pytest.mark.parametrize("ext", [".avi", ".mkv", ".mxf", ".mp4"])
def test_the_frames_play_in_order_with_their_sound(tmp_path, ext):
    """The frames in presentation order at the input's times, and the sound as far from the
    picture as in the input (within 1 ms): H.264 in AVI was read a frame (40 ms) late and AAC's
    priming put the sound 21 ms behind; MXF put the B-frames out of order and dropped the AAC."""
    src, dst = tmp_path / "in.mp4", tmp_path / f"out{ext}"
    _clip(src)
    _upscale(src, dst)
    times_in, numbers_in, onset_in, _ = _read(src, scale=1)
    times, numbers, onset, acodec = _read(dst)
    assert numbers == numbers_in == list(range(12))
    assert np.allclose(np.diff(times), 0.04, atol=1e-3)
    assert acodec is not None
    assert abs((onset - times[0]) - (onset_in - times_in[0])) < 1e-3


def test_mxf_keeps_the_frames_past_the_end_of_the_sound(tmp_path):
    """MXF's muxer keeps only whole edit units (a frame with its sound): the last 0.6 s of a
    clip whose sound stops early were dropped."""
    src, dst = tmp_path / "in.mp4", tmp_path / "out.mxf"
    _clip(src, 30, seconds=0.6)
    _upscale(src, dst)
    assert _read(dst)[1] == list(range(30))


def test_a_video_that_starts_after_its_sound_keeps_its_place_in_mxf(tmp_path, capsys):
    """MXF stores no start time for a stream: a video from 0.2 s (its sound from 0) came 0.2 s
    early. The empty slots before it repeat the first frame, as FFmpeg fills constant rates."""
    src, dst = tmp_path / "in.mp4", tmp_path / "out.mxf"
    _clip(src, 10, first=5, seconds=0.6)
    _upscale(src, dst)
    assert "5 frame(s) repeated" in capsys.readouterr().err
    times, numbers, onset, _ = _read(dst)
    assert numbers == [0] * 6 + list(range(1, 10))
    assert times[5] == pytest.approx(0.2, abs=1e-3)
    assert onset == pytest.approx(_read(src, scale=1)[2], abs=1e-3)


def test_pcm_into_mpeg_ts_is_sound_players_decode(tmp_path):
    """PCM copied into .ts was read back as a data stream (no sound); it is re-encoded."""
    src, dst = tmp_path / "in.mov", tmp_path / "out.ts"
    _clip(src, acodec="pcm_s16le")
    _upscale(src, dst)
    assert _read(dst)[3] == "aac"


# ATSC A/53 closed captions ("GA94" user data, one CEA-608 pair), as a TV recording carries them
CC_SEI = bytes.fromhex("0604") + bytes([14]) + bytes.fromhex("b50031474139340341fffc9420ff") + b"\x80"


def _captions(path):
    with av.open(str(path)) as c:
        return [[bytes(sd) for sd in f.side_data if sd.type.name == "A53_CC"] for f in c.decode(video=0)]


@pytest.mark.parametrize("model", [BICUBIC, ["--model", "espcn-x2"]])
def test_closed_captions_are_kept_in_h264(tmp_path, model):
    """A53 closed captions (side data of each frame) were dropped: PyAV gives an encoder no side
    data. Each frame keeps its own, once (a frame made by libswscale keeps them for x264 itself)."""
    src, dst = tmp_path / "tv.mp4", tmp_path / "out.mkv"
    _clip(src, 6, acodec=None, packet_prefix=CC_SEI)
    assert _captions(src) == [[bytes.fromhex("fc9420")]] * 6
    assert cli.main(["video", str(src), "-o", str(dst), *model]) == 0
    assert _captions(dst) == [[bytes.fromhex("fc9420")]] * 6


def test_closed_captions_a_codec_cannot_hold_are_said_lost(tmp_path, capsys):
    src, dst = tmp_path / "tv.mp4", tmp_path / "out.webm"
    _clip(src, 4, acodec=None, packet_prefix=CC_SEI)
    _upscale(src, dst)
    assert "closed captions (CEA-608/708) are not kept" in capsys.readouterr().err


def _stereo(path):
    with av.open(str(path)) as c:
        f = next(c.decode(video=0))
        return [sd.type.name for sd in f.side_data if sd.type.name == "STEREO3D"]


def test_a_side_by_side_3d_layout_is_kept_in_h264_and_said_lost_elsewhere(tmp_path, capsys):
    src = tmp_path / "3d.mp4"
    _clip(src, 4, acodec=None, vopts={"x264-params": "frame-packing=3"})
    _upscale(src, tmp_path / "out.mp4")
    assert _stereo(tmp_path / "out.mp4") == ["STEREO3D"]
    capsys.readouterr()
    _upscale(src, tmp_path / "out.webm")
    assert "stereo 3D layout is not kept" in capsys.readouterr().err
