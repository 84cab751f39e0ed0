"""`upsample video` across containers: clips like a phone's (VFR MP4), an iPhone's (HEVC 10-bit
MOV), the web's (WebM VP8/Vorbis) and a Matroska file with subtitles, each written as .mp4, .mkv
and .webm and read back with PyAV; animated pictures; progress without a terminal (tiny, seconds)."""

from __future__ import annotations

import io
import types
from fractions import Fraction

import av
import numpy as np
import pytest
from pathlib import Path
from PIL import Image

from upsample import cli
from upsample.inference import video
from upsample.media import progress
from upsample.media.animation import image_frame_count, is_animated_image
from upsample.media.video import frame_rate

ASS_HEADER = (b"[Script Info]\nScriptType: v4.00+\n\n[Events]\nFormat: Layer, Start, End, Style, "
              b"Name, MarginL, MarginR, MarginV, Effect, Text\n")
HAS_X265 = "libx265" in av.codecs_available


def write_clip(path, *, vcodec="libx264", pix_fmt="yuv420p", size=(48, 32), acodec="aac",
               pts=None, fps=25, subtitles=False, timecode=None):
    """A clip of a moving bar (12 frames unless `pts` says), a tone in `acodec` as long as the
    video, a subtitle line and a timecode (MOV writes it as a tmcd data track)."""
    w, h = size
    pts = list(pts or range(12))
    c = av.open(str(path), "w")
    v = c.add_stream(vcodec, rate=fps)
    v.width, v.height, v.pix_fmt = w, h, pix_fmt
    if vcodec == "libx265":
        v.codec_context.options = {"x265-params": "log-level=error"}
    if timecode:
        v.metadata["timecode"] = timecode
    a = c.add_stream(acodec, rate=48000) if acodec else None
    if a is not None:
        a.layout, a.metadata["language"] = "stereo", "fra"
        a.codec_context.options = {"strict": "-2"}  # FFmpeg's own Vorbis encoder is experimental
    s = c.add_stream("subrip") if subtitles else None
    if s is not None:
        s.codec_context.subtitle_header = ASS_HEADER
        s.metadata["language"] = "deu"
    for i, p in enumerate(pts):
        img = np.zeros((h, w, 3), np.uint8)
        img[..., 1] = np.linspace(0, 255, w, dtype=np.uint8)[None]
        img[:, (i * 3) % w] = 255
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts, frame.time_base = p, Fraction(1, fps)
        c.mux(v.encode(frame))
    c.mux(v.encode())
    if a is not None:
        n = a.codec_context.frame_size or 1024
        for k in range(int((pts[-1] + 1) / fps * 48000) // n):
            t = (np.arange(n) + k * n) / 48000
            tone = np.tile((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), (2, 1))
            f = av.AudioFrame.from_ndarray(tone, format="fltp", layout="stereo")
            f.sample_rate, f.pts, f.time_base = 48000, k * n, Fraction(1, 48000)
            c.mux(a.encode(f))
        c.mux(a.encode())
    if s is not None:
        for text, start, length in ((b"an upscaled line", 0, 200), (b"a second line", 300, 100)):
            pk = av.Packet(text)  # a gap between: MP4's mov_text fills it with an empty cue
            pk.pts, pk.duration, pk.time_base, pk.stream = start, length, Fraction(1, 1000), s
            c.mux(pk)
    c.close()


CLIPS = {  # name: (file name, write_clip arguments)
    "phone-vfr": ("phone.mp4", dict(pts=[0, 1, 3, 4, 7, 8, 9, 13, 14, 20, 21, 25])),
    "hevc10": ("iphone.mov", dict(vcodec="libx265", pix_fmt="yuv420p10le", size=(64, 64),
                                  timecode="01:02:03:04")),
    "webm-vorbis": ("web.webm", dict(vcodec="libvpx", acodec="vorbis")),
    "mkv-subs": ("subs.mkv", dict(subtitles=True)),
}
PLAYABLE_AUDIO = {".mp4": {"aac"}, ".mov": {"aac"}, ".webm": {"opus", "vorbis"}}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    made = {}
    for name, (file, kwargs) in CLIPS.items():
        if kwargs.get("vcodec") == "libx265" and not HAS_X265:
            continue
        write_clip(folder / file, **kwargs)
        made[name] = folder / file
    return made


def read_back(path) -> dict:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = list(c.decode(video=0))
        meta = {"codec": v.codec_context.name, "fmt": frames[0].format.name,
                "size": (frames[0].width, frames[0].height), "times": [f.time for f in frames],
                "audio": c.streams.audio[0].codec_context.name if c.streams.audio else None,
                "subtitles": len(c.streams.subtitles), "data": len(c.streams.data),
                "languages": [s.metadata.get("language") for s in c.streams if s.type in ("audio", "subtitle")],
                "timecode": {k.lower(): val for k, val in v.metadata.items()}.get("timecode")}
    with av.open(str(path)) as c:
        meta["audio_packets"] = [bytes(p) for p in c.demux(audio=0) if p.size] if c.streams.audio else []
    if meta["subtitles"]:
        with av.open(str(path)) as c:
            skip = 2 if c.streams.subtitles[0].codec_context.name == "mov_text" else 0  # its length
            cues = [p for p in c.demux(subtitles=0) if p.size > skip]  # not mov_text's empty gap cues
            meta["subtitle_cues"] = [bytes(p)[skip:].decode() for p in cues]
            meta["subtitle_times"] = [(float(p.pts * p.time_base), float(p.duration * p.time_base)) for p in cues]
    return meta


def bits(fmt: str) -> int:
    return av.VideoFormat(fmt).components[0].bits


@pytest.mark.parametrize("ext", [".mp4", ".mkv", ".webm", ".mov"])
@pytest.mark.parametrize("kind", list(CLIPS))
def test_each_clip_to_each_container_plays_and_keeps_frames_time_audio_and_depth(clips, kind, ext, tmp_path):
    if kind not in clips:
        pytest.skip("this PyAV has no libx265 to make the HEVC clip with")
    src, dst = clips[kind], tmp_path / f"out{ext}"
    assert cli.main(["video", str(src), "-o", str(dst), "--model", "bicubic", "--scale", "2"]) == 0
    a, b = read_back(src), read_back(dst)
    assert len(b["times"]) == len(a["times"]) == 12
    assert b["size"] == (2 * a["size"][0], 2 * a["size"][1])
    # timing kept; Matroska moves all streams by the AAC priming (21 ms) to start at 0
    assert b["times"][0] == pytest.approx(a["times"][0], abs=0.025)
    rel = lambda t: [x - t[0] for x in t]  # noqa: E731
    assert rel(b["times"]) == pytest.approx(rel(a["times"]), abs=2e-3)
    assert bits(b["fmt"]) == bits(a["fmt"])  # depth kept
    assert not (bits(b["fmt"]) > 8 and b["codec"] == "h264")  # never 10-bit H.264 by default
    if ext == ".webm":
        assert b["codec"] in ("vp9", "libdav1d", "av1", "libaom-av1")
    assert b["audio"] is not None and len(b["audio_packets"]) > 10
    if ext in PLAYABLE_AUDIO:
        assert b["audio"] in PLAYABLE_AUDIO[ext]
    if b["audio"] == a["audio"]:  # copied: bit for bit
        assert b["audio_packets"] == a["audio_packets"]
    assert b["subtitles"] == a["subtitles"]  # SubRip copied into .mkv, converted for .mp4/.webm
    # copied or converted, a track keeps its language (a QuickTime text track's reads back as none)
    assert b["languages"] == a["languages"] or (ext == ".mov" and b["languages"][0] == a["languages"][0])
    if a["subtitles"]:
        assert b["subtitle_cues"] == ["an upscaled line", "a second line"]
        assert b["subtitle_times"] == [pytest.approx((0.0, 0.2), abs=0.025), pytest.approx((0.3, 0.1), abs=0.025)]
    assert b["timecode"] == a["timecode"]  # a MOV timecode track: rewritten, never copied
    if kind == "hevc10":
        assert (a["data"], a["timecode"]) == (1, "01:02:03:04")
    assert sorted(p.name for p in tmp_path.iterdir()) == [dst.name]  # no temp left


@pytest.mark.skipif(not HAS_X265, reason="this PyAV has no libx265")
def test_ten_bit_input_gets_hevc_main10_and_libx264_on_request_is_8_bit(clips, tmp_path, capsys):
    src = clips["hevc10"]
    assert cli.main(["video", str(src), "-o", str(tmp_path / "a.mp4"), "--model", "bicubic"]) == 0
    with av.open(str(tmp_path / "a.mp4")) as c:
        cc = c.streams.video[0].codec_context
        assert (cc.name, cc.profile, cc.format.name, cc.codec_tag) == ("hevc", "Main 10", "yuv420p10le", "hvc1")
    assert cli.main(["video", str(src), "-o", str(tmp_path / "b.mp4"), "--model", "bicubic",
                     "--codec", "libx264"]) == 0
    assert "writes the 10-bit input as 8-bit yuv420p" in capsys.readouterr().err
    b = read_back(tmp_path / "b.mp4")
    assert (b["codec"], b["fmt"]) == ("h264", "yuv420p")


@pytest.mark.parametrize("src_fmt, out_fmt", [("yuv422p", "yuv420p"), ("yuvj444p", "yuvj420p")])
def test_4_2_2_and_4_4_4_inputs_are_delivered_in_4_2_0_unless_asked(tmp_path, capsys, src_fmt, out_fmt):
    """H.264 in 4:2:2 / 4:4:4 (High 4:2:2, High 4:4:4) plays in few players: the default output
    is 4:2:0 of the same depth and range, with a note; --pix-fmt keeps the input's."""
    src = tmp_path / "cam.mkv"
    write_clip(src, pix_fmt=src_fmt, size=(32, 16), acodec=None)
    assert cli.main(["video", str(src), "-o", str(tmp_path / "a.mp4"), "--model", "bicubic"]) == 0
    assert f"the input's {src_fmt} is written as {out_fmt}" in capsys.readouterr().err
    with av.open(str(tmp_path / "a.mp4")) as c:
        cc = c.streams.video[0].codec_context
        assert (cc.name, cc.format.name, cc.profile) == ("h264", out_fmt, "High")
    assert cli.main(["video", str(src), "-o", str(tmp_path / "b.mp4"), "--model", "bicubic",
                     "--pix-fmt", src_fmt]) == 0
    assert read_back(tmp_path / "b.mp4")["fmt"] == src_fmt


@pytest.mark.parametrize("out, codec, out_fmt, note", [
    ("a.mp4", "libx265", "yuv420p", "the input's gbrp is written as yuv420p"),
    ("a.webm", None, "yuv420p", "the input's gbrp is written as yuv420p"),
    ("a.mkv", "ffv1", "bgr0", "ffv1 cannot encode the input's gbrp; using bgr0")])
def test_rgb_planar_input_is_delivered_in_4_2_0_and_kept_rgb_by_lossless_encoders(tmp_path, capsys, out,
                                                                                codec, out_fmt, note):
    """A lossless RGB clip (libx264rgb's gbrp: `make-clip`, screen captures) went to HEVC and VP9
    as RGB (Rext, profile 1: few players decode it) without a note, and FFV1, which takes 8-bit
    RGB as bgr0 only, made it yuv420p; RGB is delivered as 4:2:0 and stays RGB where lossless."""
    src = tmp_path / "screen.mkv"
    write_clip(src, vcodec="libx264rgb", pix_fmt="rgb24", size=(40, 40), acodec=None)  # decodes as gbrp
    assert cli.main(["video", str(src), "-o", str(tmp_path / out), "--model", "bicubic", "--scale", "2",
                     *(["--codec", codec] if codec else [])]) == 0
    assert note in capsys.readouterr().err
    assert read_back(tmp_path / out)["fmt"] == out_fmt


@pytest.mark.parametrize("codec, src_fmt, out_fmt", [("qtrle", "yuv420p", "rgb24"), ("png", "yuv420p", "rgb24"),
                                                      ("png", "yuv420p10le", "rgb48be"), ("qtrle", "gray", "gray")])
def test_an_rgb_only_encoder_keeps_a_colour_input_in_colour(codec, src_fmt, out_fmt):
    """An encoder that takes no YUV (QuickTime Animation, PNG in .mov) is given RGB of the input's
    depth, never gray or a palette (a choice by depth and alpha alone made red frames gray)."""
    from upsample.media.video import choose_encoding
    assert choose_encoding(Path("o.mov"), src_fmt, codec)[:2] == (codec, out_fmt)


@pytest.mark.parametrize("model", ["bicubic", "espcn-x2"])  # an RGB path and the Y-plane path
@pytest.mark.parametrize("src_codec, src_fmt", [("png", "rgba"), ("qtrle", "rgb24"), ("png", "gray")])
def test_rgb_and_gray_sources_are_written_as_tagged_bt709_yuv(tmp_path, model, src_codec, src_fmt):
    """A screen capture or an animation export (PNG / QuickTime RLE in MOV) has no YUV matrix:
    its tags copied made a YUV stream labelled RGB (matrix 0; players show G, B, R) that libvpx
    refused outright. It is converted to, and tagged as, BT.709 limited range; colours hold."""
    src = tmp_path / "screen.mov"
    colour = (200, 40, 90) if src_fmt != "gray" else (120, 120, 120)
    with av.open(str(src), "w") as c:
        v = c.add_stream(src_codec, rate=10)
        v.width, v.height, v.pix_fmt = 32, 16, src_fmt
        for _ in range(3):
            img = np.zeros((16, 32, 4), np.uint8)
            img[..., :3], img[..., 3] = colour, 255
            c.mux(v.encode(av.VideoFrame.from_ndarray(img, format="rgba").reformat(format=src_fmt)))
        c.mux(v.encode())
    for ext in (".mp4", ".webm"):
        out = tmp_path / f"o{ext}"
        assert cli.main(["video", str(src), "-o", str(out), "--model", model]) == 0
        with av.open(str(out)) as c:
            cc = c.streams.video[0].codec_context
            assert (cc.colorspace, cc.color_primaries, cc.color_trc, cc.color_range) == (1, 1, 1, 1)
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        assert len(frames) == 3
        assert np.abs(frames[0][8:24, 16:48].astype(int) - colour).max() <= 4


def test_wrong_codec_for_the_container_and_gif_output_are_refused_before_any_work(clips, tmp_path,
                                                                                  capsys, monkeypatch):
    built = []
    monkeypatch.setattr("upsample.inference.api.make_upscaler", lambda *a, **k: built.append(a))
    src = clips["phone-vfr"]
    assert cli.main(["video", str(src), "-o", str(tmp_path / "o.webm"), "--codec", "libx264"]) == 2
    assert "webm container cannot hold libx264 video; use --codec libvpx-vp9" in capsys.readouterr().err
    assert cli.main(["video", str(src), "-o", str(tmp_path / "o.gif")]) == 2
    assert ".gif output is not supported" in capsys.readouterr().err
    assert not built and list(tmp_path.iterdir()) == []


def test_hevc_is_refused_for_frames_it_cannot_encode(tmp_path, capsys):
    src = tmp_path / "tiny10.mkv"
    write_clip(src, pix_fmt="yuv420p10le", size=(24, 16), acodec=None)
    if not HAS_X265:
        pytest.skip("this PyAV has no libx265")
    assert cli.main(["video", str(src), "-o", str(tmp_path / "o.mkv"), "--model", "bicubic"]) == 2
    assert "libx265 cannot encode frames under 64 pixels" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [src]


def test_animated_pictures_are_upscaled_frame_by_frame_and_stills_refused(tmp_path, capsys):
    frames = [Image.fromarray(np.full((16, 24, 3), 40 * i, np.uint8)) for i in range(5)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:],
                   duration=[100, 200, 100, 50, 100], loop=0)
    frames[0].save(tmp_path / "anim.webp", save_all=True, append_images=frames[1:], duration=100)
    frames[0].save(tmp_path / "still.gif")
    (tmp_path / "notes.txt").write_text("not a picture")
    assert [image_frame_count(tmp_path / n) for n in ("anim.gif", "still.gif", "notes.txt")] == [5, 1, None]
    assert is_animated_image(tmp_path / "anim.webp") and not is_animated_image(tmp_path / "still.gif")
    assert cli.main(["video", str(tmp_path / "anim.gif"), "-o", str(tmp_path / "a.mp4"), "--model", "bicubic"]) == 0
    out = read_back(tmp_path / "a.mp4")
    assert out["times"] == pytest.approx([0.0, 0.1, 0.3, 0.4, 0.45], abs=1e-3) and out["size"] == (48, 32)
    assert cli.main(["video", str(tmp_path / "still.gif"), "-o", str(tmp_path / "b.mp4")]) == 2
    assert "is a still image, not a video" in capsys.readouterr().err
    # FFmpeg 8.1 reads an animated WebP as one undecodable picture: refused, not cut to a frame
    code = cli.main(["video", str(tmp_path / "anim.webp"), "-o", str(tmp_path / "c.mp4"), "--model", "bicubic"])
    if code == 2:
        assert "is an animation of 5 frames that FFmpeg here cannot decode" in capsys.readouterr().err
    else:
        assert code == 0 and len(read_back(tmp_path / "c.mp4")["times"]) == 5
        (tmp_path / "c.mp4").unlink()
    assert not (tmp_path / "b.mp4").exists() and not (tmp_path / "c.mp4").exists()


def test_frame_rate_is_the_average_never_the_matroska_clock():
    stream = lambda avg, guessed, base: types.SimpleNamespace(  # noqa: E731
        average_rate=avg, guessed_rate=guessed, base_rate=base, time_base=Fraction(1, 1000))
    assert frame_rate(stream(Fraction(30000, 1001), Fraction(1000), Fraction(1000))) == Fraction(30000, 1001)
    assert frame_rate(stream(None, Fraction(1000), Fraction(24))) == 24
    assert frame_rate(stream(None, None, Fraction(1000))) == 25


def test_progress_without_a_terminal_is_one_line_per_refresh(monkeypatch):
    monkeypatch.setattr(progress, "LINE_INTERVAL", 0)
    log = io.StringIO()
    bar = progress.progress_bar(10, True, desc="frames", unit=" frames", stream=log)
    for _ in range(10):
        bar.update(1)
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) >= 3
    assert lines[-1].startswith("frames 10/10 (100%)") and all("ETA" in line for line in lines)
    quiet = io.StringIO()
    progress.progress_bar(10, False, desc="frames", unit=" frames", stream=quiet).close()
    assert quiet.getvalue() == ""


def test_a_long_run_gets_one_estimate_line_and_a_short_one_none():
    now = [0.0]
    log = io.StringIO()
    estimate = video.RunEstimate(3000, clock=lambda: now[0], stream=log)
    for done in range(1, 8):
        now[0] += 0.5  # 0.5 s a frame: 3000 frames take 25 min
        estimate.update(done)
    assert log.getvalue().count("\n") == 1 and "estimate: 2996 more frames x 0.50 s/frame = 24:58" in log.getvalue()
    short = io.StringIO()
    estimate = video.RunEstimate(100, clock=lambda: now[0], stream=short)
    for done in range(1, 8):
        now[0] += 0.5
        estimate.update(done)
    assert short.getvalue() == ""


def test_reencoded_audio_follows_the_clip_window(tmp_path):
    src, dst = tmp_path / "long.mp4", tmp_path / "window.webm"
    write_clip(src, pts=list(range(100)))  # 4 s
    assert cli.main(["video", str(src), "-o", str(dst), "--model", "bicubic", "--start", "1",
                     "--duration", "2"]) == 0
    with av.open(str(dst)) as c:
        assert c.streams.audio[0].codec_context.name == "opus"
        times = [float(p.pts * p.time_base) for p in c.demux(audio=0) if p.size]
    assert -0.03 < min(times) < 0.03 and 1.9 < max(times) < 2.05
    assert len(read_back(dst)["times"]) == 50


def test_an_mpeg_video_stream_is_no_still_image_although_pillow_identifies_it(tmp_path):
    src = tmp_path / "raw.m2v"
    write_clip(src, vcodec="mpeg2video", acodec=None)
    with Image.open(src) as im:
        assert im.format == "MPEG" and image_frame_count(src) is None
    assert cli.main(["video", str(src), "-o", str(tmp_path / "o.mkv"), "--model", "bicubic"]) == 0
    assert len(read_back(tmp_path / "o.mkv")["times"]) == 12


def test_mp4_subtitles_come_back_into_matroska_as_subrip(clips, tmp_path):
    mp4, mkv = tmp_path / "a.mp4", tmp_path / "b.mkv"
    assert cli.main(["video", str(clips["mkv-subs"]), "-o", str(mp4), "--model", "bicubic"]) == 0
    assert cli.main(["video", str(mp4), "-o", str(mkv), "--model", "bicubic", "--scale", "1"]) == 0
    with av.open(str(mkv)) as c:
        assert c.streams.subtitles[0].codec_context.name in ("subrip", "srt")
    assert read_back(mkv)["subtitle_cues"] == ["an upscaled line", "a second line"]


def test_an_odd_output_side_that_h264_cannot_take_is_one_line(tmp_path, capsys):
    """321x241 x3 is 963x723: x264's 4:2:0 needs even sides ('Generic error in an external
    library' before); VP9 takes it."""
    src = tmp_path / "odd.mkv"
    write_clip(src, vcodec="libvpx-vp9", size=(21, 15), acodec=None)
    assert cli.main(["video", str(src), "-o", str(tmp_path / "o.mp4"), "--model", "bicubic", "--scale", "3"]) == 2
    err = capsys.readouterr().err
    assert "cannot encode 63x45 frames in yuv420p" in err and "Traceback" not in err
    assert not list(tmp_path.glob("*.mp4")) and not list(tmp_path.glob(".*part*"))
    assert cli.main(["video", str(src), "-o", str(tmp_path / "o.webm"), "--model", "bicubic", "--scale", "3"]) == 0
    assert read_back(tmp_path / "o.webm")["size"] == (63, 45)


def test_pcm_audio_stays_pcm_in_mov_and_becomes_aac_in_mp4(tmp_path):
    src = tmp_path / "cam.mov"
    write_clip(src, acodec="pcm_s16le", size=(32, 16))
    for ext, codec in ((".mov", "pcm_s16le"), (".mp4", "aac")):
        out = tmp_path / f"o{ext}"
        assert cli.main(["video", str(src), "-o", str(out), "--model", "bicubic"]) == 0
        assert read_back(out)["audio"] == codec
    assert read_back(tmp_path / "o.mov")["audio_packets"] == read_back(src)["audio_packets"]  # copied


def test_trims_of_mpeg_ts_count_from_its_first_frame_and_keep_every_frame(tmp_path):
    """MPEG-TS starts late (FFmpeg's mux delay, a broadcast's clock) and has no index:
    --start/--duration count from the file's start (nothing was found before), and every frame
    of the window is kept (a seek lost 21 of 24)."""
    src = tmp_path / "cam.ts"
    with av.open(str(src), "w") as c:
        v = c.add_stream("libx264", rate=24)
        v.width, v.height, v.pix_fmt = 32, 16, "yuv420p"
        v.codec_context.options = {"g": "24", "keyint_min": "24", "sc_threshold": "0"}
        for i in range(96):
            img = np.zeros((16, 32, 3), np.uint8)
            img[:, i % 32] = 255
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = 48 + i, Fraction(1, 24)  # from 2 s, as a cut of a broadcast
            c.mux(v.encode(frame))
        c.mux(v.encode())
    with av.open(str(src)) as c:
        assert c.start_time / 1e6 > 1.9  # the offset this test is about
    for args, frames in ((["--start", "1.2", "--duration", "1"], 24), (["--duration", "1"], 24),
                         (["--start", "3.5"], 12), ([], 96)):
        out = tmp_path / "o.mp4"
        assert cli.main(["video", str(src), "-o", str(out), "--model", "bicubic", "--overwrite", *args]) == 0
        times = read_back(out)["times"]
        assert len(times) == frames and times[0] == pytest.approx(0, abs=0.05), args  # from 0, as FFmpeg
        with av.open(str(out)) as c:
            assert c.duration / 1e6 == pytest.approx(frames / 24, abs=0.1)  # no empty lead-in


@pytest.mark.parametrize("ext", [".mp4", ".mkv", ".webm"])
def test_a_gifs_last_frame_is_held_as_long_as_it_says(tmp_path, ext):
    """Delays 100/500/1000 ms: 1.6 s of video (the closing hold was cut to the average frame)."""
    frames = [Image.fromarray(np.full((16, 24, 3), v, np.uint8)) for v in (0, 120, 240)]
    src = tmp_path / "a.gif"
    frames[0].save(src, save_all=True, append_images=frames[1:], duration=[100, 500, 1000], loop=0)
    out = tmp_path / f"o{ext}"
    assert cli.main(["video", str(src), "-o", str(out), "--model", "bicubic"]) == 0
    with av.open(str(out)) as c:
        assert c.duration / 1e6 == pytest.approx(1.6, abs=0.02)
        assert [round(f.time, 2) for f in c.decode(video=0)] == [0.0, 0.1, 0.6]


def test_a_transparent_input_says_its_alpha_is_not_kept(tmp_path, capsys):
    src = tmp_path / "logo.mov"
    with av.open(str(src), "w") as c:
        v = c.add_stream("png", rate=10)
        v.width, v.height, v.pix_fmt = 32, 16, "rgba"
        for _ in range(2):
            c.mux(v.encode(av.VideoFrame.from_ndarray(np.zeros((16, 32, 4), np.uint8), format="rgba")))
        c.mux(v.encode())
    assert cli.main(["video", str(src), "-o", str(tmp_path / "o.mp4"), "--model", "bicubic"]) == 0
    assert "transparency (alpha) is not kept" in capsys.readouterr().err


def test_a_subtitle_on_screen_at_start_is_kept_from_there(clips, tmp_path):
    """--start 0.1 falls inside the first cue (0-0.2 s): it stays, shortened (it was dropped)."""
    out = tmp_path / "o.mkv"
    assert cli.main(["video", str(clips["mkv-subs"]), "-o", str(out), "--model", "bicubic", "--start", "0.1"]) == 0
    back = read_back(out)
    assert back["subtitle_cues"] == ["an upscaled line", "a second line"]
    assert back["subtitle_times"] == [pytest.approx((0.0, 0.1), abs=0.01), pytest.approx((0.2, 0.1), abs=0.01)]


def test_matroska_attachments_are_kept_in_matroska(tmp_path, capsys):
    """The fonts an ASS subtitle track needs travel as attachments (they were dropped)."""
    src = tmp_path / "anime.mkv"
    with av.open(str(src), "w") as c:
        v = c.add_stream("libx264", rate=10)
        v.width, v.height, v.pix_fmt = 32, 16, "yuv420p"
        c.add_attachment(name="font.ttf", mimetype="application/x-truetype-font", data=b"\x00\x01fontdata")
        for _ in range(3):
            c.mux(v.encode(av.VideoFrame.from_ndarray(np.zeros((16, 32, 3), np.uint8), format="rgb24")))
        c.mux(v.encode())
    out = tmp_path / "o.mkv"
    assert cli.main(["video", str(src), "-o", str(out), "--model", "bicubic"]) == 0
    with av.open(str(out)) as c:
        (att,) = [s for s in c.streams if s.type == "attachment"]
        assert att.metadata["filename"] == "font.ttf" and att.data == b"\x00\x01fontdata"
    assert cli.main(["video", str(src), "-o", str(tmp_path / "o.mp4"), "--model", "bicubic"]) == 0
    assert "(attachment) is not copied" in capsys.readouterr().err


def test_an_opaque_gif_gets_no_transparency_note(tmp_path, capsys):
    """FFmpeg decodes every GIF as BGRA: the note is for pictures that really have see-through pixels."""
    frames = [Image.fromarray(np.full((16, 24, 3), v, np.uint8)) for v in (0, 200)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=100)
    assert cli.main(["video", str(tmp_path / "a.gif"), "-o", str(tmp_path / "o.mp4"), "--model", "bicubic"]) == 0
    assert "transparency" not in capsys.readouterr().err


def test_a_subtitle_that_began_before_the_seek_point_is_kept(tmp_path):
    """--start 1.2 seeks to the key frame at 0.8 s; the cue shown from 0.1 to 1.9 s lies before
    it in the file, and is still kept, from the window's start (it was not read at all)."""
    src = tmp_path / "film.mkv"
    with av.open(str(src), "w", options={"cluster_time_limit": "100"}) as c:  # a cluster a key frame
        v = c.add_stream("libx264", rate=25)
        v.width, v.height, v.pix_fmt = 32, 16, "yuv420p"
        v.codec_context.options = {"x264-params": "keyint=10:min-keyint=10:scenecut=0"}
        s = c.add_stream("subrip")
        s.codec_context.subtitle_header = ASS_HEADER
        for text, start, length in ((b"a long line", 100, 1800), (b"a late line", 1950, 50)):
            pk = av.Packet(text)
            pk.pts, pk.duration, pk.time_base, pk.stream = start, length, Fraction(1, 1000), s
            c.mux(pk)
        for i in range(50):
            img = np.full((16, 32, 3), i * 5, np.uint8)
            c.mux(v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        c.mux(v.encode())
    out = tmp_path / "o.mkv"
    assert cli.main(["video", str(src), "-o", str(out), "--model", "bicubic", "--start", "1.2"]) == 0
    back = read_back(out)
    assert back["subtitle_cues"] == ["a long line", "a late line"]
    assert back["subtitle_times"] == [pytest.approx((0.0, 0.7), abs=0.01), pytest.approx((0.75, 0.05), abs=0.01)]


def _clip_with_audio(path, acodec, layout, rate=48000, vcodec="mpeg4"):
    """A 1 s clip of `vcodec` video and `acodec` audio in `layout` (an AVI's PCM reads back as
    "2 channels", without a layout)."""
    with av.open(str(path), "w") as c:
        v = c.add_stream(vcodec, rate=10)
        v.width, v.height, v.pix_fmt = 32, 16, "yuv420p"
        a = c.add_stream(acodec, rate=rate)
        a.layout = layout
        if "fltp" in [f.name for f in a.codec_context.codec.audio_formats]:
            a.format = "fltp"
        for i in range(10):
            c.mux(v.encode(av.VideoFrame.from_ndarray(np.full((16, 32, 3), i * 20, np.uint8), format="rgb24")))
        c.mux(v.encode())
        n, fmt = a.codec_context.frame_size or 1024, a.codec_context.format.name
        channels = av.AudioLayout(layout).nb_channels
        for k in range(rate // n):
            tone = np.sin(2 * np.pi * 440 * (np.arange(n) + k * n) / rate) * 0.3
            planes = np.tile(tone, (channels, 1))
            if fmt == "s16":
                data = (planes.T.reshape(1, -1) * 32767).astype(np.int16)
            else:
                data = planes.astype(np.float32)
            f = av.AudioFrame.from_ndarray(data, format=fmt, layout=layout)
            f.sample_rate, f.pts, f.time_base = rate, k * n, Fraction(1, rate)
            c.mux(a.encode(f))
        c.mux(a.encode())
    return path


@pytest.mark.parametrize("src_name, acodec, layout, out_name, want", [
    ("camera.avi", "pcm_s16le", "stereo", "o.mp4", ("aac", "stereo")),  # PCM of no layout
    ("film.mkv", "ac3", "5.1(side)", "o.webm", ("opus", "5.1")),  # Opus takes 5.1, not 5.1(side)
    ("song.mp4", "mp3", "stereo", "o.mp4", ("mp3", "stereo")),  # MP4 plays MP3: copied
])
def test_audio_the_container_cannot_take_is_reencoded_in_a_layout_its_encoder_takes(
        tmp_path, src_name, acodec, layout, out_name, want):
    if acodec == "mp3" and "libmp3lame" not in av.codecs_available:
        pytest.skip("no MP3 encoder in this FFmpeg")
    src = _clip_with_audio(tmp_path / src_name, "libmp3lame" if acodec == "mp3" else acodec, layout)
    out = tmp_path / out_name
    assert cli.main(["video", str(src), "-o", str(out), "--model", "bicubic", "--scale", "2"]) == 0
    with av.open(str(out)) as c:
        a = c.streams.audio[0]
        assert (a.codec_context.codec.canonical_name, a.codec_context.layout.name) == want
        assert sum(f.samples for f in c.decode(audio=0)) >= 40000  # the whole second decodes


def _tiny(path, vcodec, pix_fmt, frames=3, options=None, metadata=None, rate=10, transparent=False):
    with av.open(str(path), "w") as c:
        v = c.add_stream(vcodec, rate=rate)
        v.width, v.height, v.pix_fmt = 64, 64, pix_fmt
        v.codec_context.options = options or {}
        v.metadata.update(metadata or {})
        for i in range(frames):
            rgba = np.full((64, 64, 4), 40 * i % 256, np.uint8)
            rgba[..., 3] = 255
            if transparent and (transparent != "late" or i > 0):  # "late": the first frame opaque
                rgba[:, :32, 3] = 0
            c.mux(v.encode(av.VideoFrame.from_ndarray(rgba, format="rgba").reformat(format=pix_fmt)))
        c.mux(v.encode())
    return path


def test_notes_for_what_the_output_does_not_keep_and_12_bit_written_as_10(tmp_path, capsys):
    """VP9 alpha (WebM's ALPHA_MODE tag) and interlacing get a note; a 12-bit 4:4:4 source is
    written as HEVC Main 10 4:2:0, which players decode (Main 12 hardly any)."""
    if "libvpx-vp9" in av.codecs_available:
        webm = _tiny(tmp_path / "a.webm", "libvpx-vp9", "yuva420p", transparent=True)
        assert cli.main(["video", str(webm), "-o", str(tmp_path / "a.mp4"), "--model", "bicubic"]) == 0
        assert "transparency (alpha) is not kept" in capsys.readouterr().err
    ts = _tiny(tmp_path / "i.mkv", "mpeg2video", "yuv420p", options={"flags": "+ildct+ilme"}, rate=25)
    assert cli.main(["video", str(ts), "-o", str(tmp_path / "i.mp4"), "--model", "bicubic"]) == 0
    assert "the input is interlaced" in capsys.readouterr().err
    if HAS_X265:
        deep = _tiny(tmp_path / "d.mkv", "ffv1", "yuv444p12le")
        assert cli.main(["video", str(deep), "-o", str(tmp_path / "d.mp4"), "--model", "bicubic"]) == 0
        assert "yuv444p12le is written as yuv420p10le" in capsys.readouterr().err
        with av.open(str(tmp_path / "d.mp4")) as c:
            assert c.streams.video[0].codec_context.pix_fmt == "yuv420p10le"


def _alpha_planes(path):
    """The alpha of each frame of `path`, decoded as the pipeline decodes it (libvpx for VP9)."""
    from upsample.media.video import video_decoder
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        dec = video_decoder(v)
        return [f.to_ndarray(format="rgba")[..., 3] for p in c.demux(v) for f in dec.decode(p)]


@pytest.mark.parametrize("src_codec, src_fmt, out, codec, model", [
    ("libvpx-vp9", "yuva420p", "o.webm", None, "espcn-x2"),      # WebM alpha, network on Y
    ("libvpx-vp9", "yuva420p", "o.mkv", "libvpx-vp9", "bicubic"),  # the RGB path
    ("prores_ks", "yuva444p10le", "o.mov", "prores_ks", "espcn-x2"),  # ProRes 4444
    ("png", "rgba", "o.webm", None, "bicubic"),                   # PNG in MOV
    ("prores_ks", "yuva444p10le", "o.webm", None, "bicubic"),     # deep: VP9 8-bit, not opaque AV1
])
def test_transparency_is_kept_where_the_output_can_hold_it(tmp_path, src_codec, src_fmt, out, codec, model):
    """An alpha channel goes through (upscaled by libswscale's bicubic) where the encoder and
    container keep one: its left half transparent, its right half opaque, at twice the size."""
    ext = ".webm" if src_codec == "libvpx-vp9" else ".mov"
    src = _tiny(tmp_path / f"in{ext}", src_codec, src_fmt, transparent=True)
    assert cli.main(["video", str(src), "-o", str(tmp_path / out), "--model", model, "--scale", "2"]
                    + (["--codec", codec] if codec else [])) == 0
    planes = _alpha_planes(tmp_path / out)
    assert len(planes) == 3 and planes[0].shape == (128, 128)
    for a in planes:
        assert a[:, :56].max() <= 2 and a[:, 72:].min() >= 253


def test_alpha_dropped_where_the_encoder_cannot_keep_it(tmp_path, capsys):
    """ProRes 4444 into .mov with the default encoder: HEVC (x265 takes yuva formats, but MOV
    cannot hold its alpha layer: the run failed), opaque, with a note saying how to keep it."""
    if not HAS_X265:
        pytest.skip("no libx265 here")
    src = _tiny(tmp_path / "in.mov", "prores_ks", "yuva444p10le", transparent=True)
    assert cli.main(["video", str(src), "-o", str(tmp_path / "o.mov"), "--model", "bicubic", "--scale", "2"]) == 0
    assert "--codec prores_ks (ProRes 4444) keeps it" in capsys.readouterr().err
    late = _tiny(tmp_path / "late.webm", "libvpx-vp9", "yuva420p", transparent="late")
    assert cli.main(["video", str(late), "-o", str(tmp_path / "late.mp4"), "--model", "bicubic", "--scale", "2"]) == 0
    assert "transparency (alpha) is not kept" in capsys.readouterr().err  # the first frame is opaque
    with av.open(str(tmp_path / "o.mov")) as c:
        assert c.streams.video[0].codec_context.pix_fmt == "yuv420p10le"


def test_damaged_packets_are_skipped_with_a_note(tmp_path, capsys):
    """A broken download: a few packets of random bytes. FFmpeg goes on past them, so does this
    (the whole run failed on the first)."""
    clean = _tiny(tmp_path / "clean.mkv", "libx264", "yuv420p", frames=40, options={"g": "10"})
    src = tmp_path / "broken.mkv"
    rng = np.random.default_rng(1)
    with av.open(str(clean)) as c, av.open(str(src), "w") as out:
        s = out.add_stream_from_template(c.streams.video[0])
        for i, packet in enumerate(c.demux(video=0)):
            if not packet.size:
                continue
            if i in (3, 4, 15) and not packet.is_keyframe:
                broken = av.Packet(rng.integers(0, 256, packet.size, dtype=np.uint8).tobytes())
                broken.pts, broken.dts, broken.time_base = packet.pts, packet.dts, packet.time_base
                packet = broken
            packet.stream = s
            out.mux(packet)
    assert cli.main(["video", str(src), "-o", str(tmp_path / "o.mp4"), "--model", "bicubic"]) == 0
    err = capsys.readouterr().err
    assert "damaged packet(s) of the input" in err
    assert len(read_back(tmp_path / "o.mp4")["times"]) >= 30


@pytest.mark.parametrize("name, codec, want_video, want_audio", [
    ("o.avi", None, "h264", "aac"),  # a constant rate of 25/s (1/12800 from MP4 made 600/s)
    ("o.mpg", None, "mpeg2video", "mp2"),  # DVD's codecs; AAC was re-encoded as AAC, then refused
    ("o.ogv", None, None, "opus"),
    ("o.h264", None, "h264", None),  # an elementary stream: the audio dropped, said (a traceback)
    ("o.y4m", None, "rawvideo", None),
    ("o.mp4", "mpeg2video", "mpeg2video", "aac"),  # --codec: its time base was refused
    ("o.avi", "mjpeg", "mjpeg", "aac"),  # limited range was refused
])
def test_every_container_offered_is_written_with_codecs_it_takes(tmp_path, capsys, name, codec, want_video, want_audio):
    src = tmp_path / "in.mp4"
    write_clip(src)
    out = tmp_path / name
    assert cli.main(["video", str(src), "-o", str(out), "--model", "bicubic", *(["--codec", codec] if codec else [])]) == 0
    err = capsys.readouterr().err
    with av.open(str(out)) as c:
        v = c.streams.video[0]
        assert want_video is None or v.codec_context.codec.canonical_name == want_video
        assert len(list(c.decode(video=0))) == 12
        if name.endswith(".avi"):
            assert v.average_rate == 25
        audio = [a.codec_context.codec.canonical_name for a in c.streams.audio]
    assert audio == ([want_audio] if want_audio else [])
    if want_audio is None:
        assert "cannot go into" in err


@pytest.mark.parametrize("ext", [".mkv", ".mp4"])
def test_chapters_are_kept_and_cut_to_the_window(tmp_path, ext):
    src = tmp_path / "film.mkv"
    write_clip(src, acodec=None, pts=range(50))
    with av.open(str(src)) as c, av.open(str(tmp_path / "ch.mkv"), "w") as out:
        s = out.add_stream_from_template(c.streams.video[0])
        out.set_chapters([{"id": 1, "start": 0, "end": 1000, "time_base": Fraction(1, 1000), "metadata": {"title": "Intro"}},
                          {"id": 2, "start": 1000, "end": 2000, "time_base": Fraction(1, 1000), "metadata": {"title": "Main"}}])
        for p in c.demux(video=0):
            if p.size:
                p.stream = s
                out.mux(p)
    out = tmp_path / f"o{ext}"
    assert cli.main(["video", str(tmp_path / "ch.mkv"), "-o", str(out), "--model", "bicubic", "--start", "0.6"]) == 0
    with av.open(str(out)) as c:
        got = [(ch["metadata"]["title"], float(ch["start"] * ch["time_base"]), float(ch["end"] * ch["time_base"]))
               for ch in c.chapters()]
    assert got == [("Intro", 0.0, pytest.approx(0.4)), ("Main", pytest.approx(0.4), pytest.approx(1.4))]


def test_the_rgb_path_keeps_a_flat_colour(tmp_path):
    """RGB models (and bicubic) see RGB frames: 8-bit BT.709 Y/U/V 180/100/160 came back as
    178/100/161 (libswscale's fast rounding); lossless out, it now comes back as it went in."""
    src = tmp_path / "flat.mkv"
    with av.open(str(src), "w") as c:
        v = c.add_stream("ffv1", rate=10)
        v.width, v.height, v.pix_fmt = 32, 32, "yuv420p"
        v.codec_context.colorspace, v.codec_context.color_range = 1, 1  # BT.709, limited
        for _ in range(2):
            f = av.VideoFrame(32, 32, "yuv420p")
            for plane, value in zip(f.planes, (180, 100, 160)):
                _plane(plane)[:] = value
            f.colorspace, f.color_range = 1, 1
            c.mux(v.encode(f))
        c.mux(v.encode())
    out = tmp_path / "o.mkv"
    assert cli.main(["video", str(src), "-o", str(out), "--model", "bicubic", "--scale", "2", "--codec", "ffv1"]) == 0
    with av.open(str(out)) as c:
        f = next(c.decode(video=0))
        assert [round(float(_plane(p).mean()), 2) for p in f.planes] == [180, 100, 160]


def _plane(p):
    return np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, :p.width]


def hdr10_clip(src: Path) -> Path:
    """A 3-frame 10-bit HEVC clip with PQ / BT.2020 tags and HDR10 static metadata (x265's)."""
    params = ("log-level=error:hdr10=1:master-display=G(13250,34500)B(7500,3000)R(34000,16000)"
              "WP(15635,16450)L(10000000,1):max-cll=1000,400")
    with av.open(str(src), "w") as c:
        v = c.add_stream("libx265", rate=10)
        v.width, v.height, v.pix_fmt = 64, 64, "yuv420p10le"
        cc = v.codec_context
        cc.color_primaries, cc.color_trc, cc.colorspace, cc.color_range = 9, 16, 9, 1
        cc.options = {"x265-params": params}
        for i in range(3):
            c.mux(v.encode(av.VideoFrame.from_ndarray(np.full((64, 64, 3), 60 * i, np.uint8), format="rgb24")
                           .reformat(format="yuv420p10le")))
        c.mux(v.encode())
    return src


@pytest.mark.skipif(not HAS_X265, reason="no libx265 in this FFmpeg")
def test_hdr10_mastering_display_and_light_level_are_kept(tmp_path):
    """HDR TVs tone-map by the mastering display's light: it was lost (the PQ / BT.2020 tags kept)."""
    src = hdr10_clip(tmp_path / "hdr.mkv")

    def hdr(path):
        with av.open(str(path)) as c:
            f = next(c.decode(video=0))
            return {sd.type.name: bytes(sd) for sd in f.side_data if sd.type.name != "SEI_UNREGISTERED"}
    assert set(hdr(src)) == {"MASTERING_DISPLAY_METADATA", "CONTENT_LIGHT_LEVEL"}
    out = tmp_path / "o.mp4"
    assert cli.main(["video", str(src), "-o", str(out), "--model", "bicubic", "--scale", "2"]) == 0
    assert hdr(out) == hdr(src)


@pytest.mark.parametrize("ext", [".mp4", ".mkv"])
def test_a_cover_picture_is_kept_and_never_taken_for_the_video(tmp_path, ext):
    """An MP4's cover art is a video stream of one picture, larger than the video here: the video
    is the stream upscaled (FFmpeg's choice), the cover copied (Matroska: as its attachment)."""
    src = tmp_path / "song.mp4"
    with av.open(str(src), "w") as c:
        cover = c.add_stream("mjpeg", rate=1)
        cover.width = cover.height = 96
        cover.pix_fmt, cover.disposition = "yuvj420p", av.stream.Disposition.attached_pic
        v = c.add_stream("libx264", rate=10)
        v.width, v.height, v.pix_fmt = 32, 16, "yuv420p"
        picture = list(cover.encode(av.VideoFrame.from_ndarray(np.full((96, 96, 3), 200, np.uint8), format="rgb24")
                                    .reformat(format="yuvj420p"))) + list(cover.encode())
        for i in range(10):
            c.mux(v.encode(av.VideoFrame.from_ndarray(np.full((16, 32, 3), i * 20, np.uint8), format="rgb24")))
        c.mux(v.encode())
        c.mux(picture)
    out = tmp_path / f"o{ext}"
    assert cli.main(["video", str(src), "-o", str(out), "--model", "bicubic", "--scale", "2"]) == 0
    with av.open(str(out)) as c:
        video, cover = sorted(c.streams.video, key=lambda s: bool(s.disposition & av.stream.Disposition.attached_pic))
        assert (video.codec_context.width, video.codec_context.height) == (64, 32)
        assert video.disposition & av.stream.Disposition.default  # as the input's (lost in Matroska)
        assert len(list(c.decode(video))) == 10
        assert cover.disposition & av.stream.Disposition.attached_pic and cover.codec_context.width == 96


def test_start_before_a_late_picture_keeps_the_sound_from_there(tmp_path):
    """Sound from 0 s, picture from 0.5 s: --start 0.2 keeps the sound from 0.2 s (the seek to a
    video key frame landed at 0.5 s and the sound between was lost)."""
    src = tmp_path / "late.mp4"
    write_clip(src, pts=range(5, 17), fps=10)
    out = tmp_path / "o.mp4"
    assert cli.main(["video", str(src), "-o", str(out), "--model", "bicubic", "--start", "0.2"]) == 0
    with av.open(str(out)) as c:
        sound = [float(p.pts * p.time_base) for p in c.demux(audio=0) if p.size]
    with av.open(str(out)) as c:
        picture = [f.time for f in c.decode(video=0)]
    assert sound[0] < 0.05 and picture[0] == pytest.approx(0.3, abs=0.02)


def test_a_cut_moves_picture_and_sound_by_the_same_time(tmp_path):
    """AVI counts video in frames (1/25 s): --start 0.5 is 12.5 of them. Each stream rounded the
    cut in its own time base, and the picture came out 20 ms late against the sound."""
    src = tmp_path / "cam.avi"
    write_clip(src, vcodec="mpeg4", acodec="mp2", pts=range(25), fps=25)
    out = tmp_path / "o.mkv"
    assert cli.main(["video", str(src), "-o", str(out), "--model", "bicubic", "--start", "0.5"]) == 0

    def first_after(path, cut):
        with av.open(str(path)) as c:
            sound = min(float(p.pts * p.time_base) for p in c.demux(audio=0) if p.size and p.pts * p.time_base >= cut)
        with av.open(str(path)) as c:
            picture = min(f.time for f in c.decode(video=0) if f.time >= cut)
        return picture - sound
    assert first_after(out, 0) == pytest.approx(first_after(src, 0.5), abs=0.002)


def test_a_matroska_film_at_23_976_keeps_its_frame_grid(tmp_path):
    """Matroska's clock counts milliseconds: 23.976 fps there steps 42, 41, 42 ms. The MP4 had
    those steps; now every frame is on the 1001/24000 s grid."""
    src = tmp_path / "film.mkv"
    write_clip(src, vcodec="libx264", acodec=None, pts=range(24), fps=Fraction(24000, 1001))
    with av.open(str(src)) as c:
        assert c.streams.video[0].time_base == Fraction(1, 1000)
    out = tmp_path / "o.mp4"
    assert cli.main(["video", str(src), "-o", str(out), "--model", "bicubic"]) == 0
    times = read_back(out)["times"]
    steps = {round((b - a) * 24000, 6) for a, b in zip(times, times[1:])}
    assert len(times) == 24 and steps == {1001}
