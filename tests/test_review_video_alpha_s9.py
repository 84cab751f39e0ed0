"""Review s9: `upsample video` of inputs with alpha. The colour of fully transparent pixels is
filled from the nearest visible one before upscaling where the output keeps the alpha (else the
model and libswscale mix that hidden colour into the visible edge: a fringe of ~95 levels on a
sprite); where the output is opaque the picture is composited over black (dropping the alpha
showed the hidden colour itself: garbage, or hard edges)."""

from __future__ import annotations

import av
import numpy as np
import pytest
from PIL import Image

from upsample import cli
from upsample.inference.video import _alpha_settled
from upsample.media.video import plane_view, video_decoder

RED = (220, 40, 30)


def _sprite(t: int, hidden: str, h: int = 48, w: int = 64) -> np.ndarray:
    """A red anti-aliased disk (moved by `t` px) on a transparent ground whose colour is `hidden`."""
    y, x = np.mgrid[0:h, 0:w]
    alpha = np.clip((h / 3 - np.hypot(y - h / 2 + .5, x - w / 2 + .5 - t)) * 170, 0, 255).astype(np.uint8)
    rgb = np.empty((h, w, 3), np.uint8)
    rgb[:] = RED
    ground = np.zeros((h, w, 3)) if hidden == "black" else np.random.default_rng(t).integers(0, 256, (h, w, 3))
    rgb[alpha == 0] = ground[alpha == 0]
    return np.dstack([rgb, alpha])


def _clip(path, hidden: str, frames: int = 3) -> list[np.ndarray]:
    """A PNG-in-MOV clip of the sprite (lossless, RGBA as After Effects exports it); its frames."""
    pictures = [_sprite(t, hidden) for t in range(frames)]
    with av.open(str(path), "w") as c:
        s = c.add_stream("png", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "rgba"
        for p in pictures:
            for packet in s.encode(av.VideoFrame.from_ndarray(p, format="rgba")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return pictures


def _frames(path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        dec = video_decoder(v)
        return [f.to_ndarray(format="rgba") for p in c.demux(v) for f in dec.decode(p)]


def _stray(rgba: np.ndarray) -> tuple[float, float]:
    """How far the visible pixels' colour strays from the disk's: weighted by their alpha, and at most."""
    a = rgba[..., 3] / 255
    stray = np.abs(rgba[..., :3].astype(float) - RED).mean(2)
    return float((stray * a).sum() / a.sum()), float(stray[a > 0].max())


@pytest.mark.parametrize("model, codec, ext", [("bicubic", "png", ".mov"), ("espcn-x2", "qtrle", ".mov"),
                                               ("bicubic", "ffv1", ".mkv")])
def test_a_transparent_clip_upscaled_keeps_no_dark_fringe(tmp_path, model, codec, ext):
    """RGB path (bicubic) and Y path (ESPCN in yuva420p): the fringe was 0.66 / 3.0 levels
    weighted by alpha, ~95 at most; now none beyond the YUV path's rounding."""
    _clip(tmp_path / "in.mov", "black")
    out = tmp_path / f"out{ext}"
    args = ["video", str(tmp_path / "in.mov"), "-o", str(out), "--model", model, "--codec", codec]
    assert cli.main(args + (["--scale", "2"] if model == "bicubic" else [])) == 0
    frames = _frames(out)
    assert len(frames) == 3 and frames[0].shape == (96, 128, 4) and (frames[0][..., 3] == 0).any()
    for f in frames:
        weighted, worst = _stray(f)
        assert weighted < 2.5 and worst < 4


def _yuva_frame(hidden: str) -> av.VideoFrame:
    return av.VideoFrame.from_ndarray(_sprite(0, hidden), format="rgba").reformat(format="yuva420p")


def test_the_fill_changes_only_hidden_samples_and_leaves_the_decoded_frame_alone():
    f = _yuva_frame("garbage")
    before = [plane_view(p, np.uint8).copy() for p in f.planes]
    o = _alpha_settled(f, keep=True)
    after = [plane_view(p, np.uint8) for p in o.planes]
    assert o is not f and all(np.array_equal(b, plane_view(p, np.uint8)) for b, p in zip(before, f.planes))
    alpha = before[3]
    assert np.array_equal(after[3], alpha) and np.array_equal(after[0][alpha > 0], before[0][alpha > 0])
    assert set(after[0][alpha == 0]) <= set(before[0][alpha > 0])  # a visible sample's luma
    blocks = alpha.reshape(24, 2, 32, 2).max((1, 3))  # a chroma sample is hidden where its 2x2 block is
    for k in (1, 2):
        assert np.array_equal(after[k][blocks > 0], before[k][blocks > 0])
        assert set(after[k][blocks == 0]) <= set(before[k][blocks > 0])


def test_frames_with_nothing_to_settle_pass_as_they_are():
    opaque = av.VideoFrame.from_ndarray(np.full((8, 8, 3), 200, np.uint8), format="rgb24")
    assert _alpha_settled(opaque, keep=True) is opaque and _alpha_settled(opaque, keep=False) is opaque
    solid = _yuva_frame("black").reformat(format="yuva444p10le")
    plane_view(solid.planes[3], np.uint16)[:] = 1023  # 10-bit opaque: 1023, not 65535
    assert _alpha_settled(solid, keep=True) is solid and _alpha_settled(solid, keep=False) is solid


def test_a_transparent_clip_into_an_opaque_output_is_composited_over_black(tmp_path, capsys):
    """Into H.264 the alpha cannot go: the garbage under the transparent pixels showed (95
    levels from the picture over black); now the picture is the clip over black, and the note
    says so."""
    pictures = _clip(tmp_path / "in.mov", "garbage")
    out = tmp_path / "out.mp4"
    args = ["video", str(tmp_path / "in.mov"), "-o", str(out), "--model", "bicubic", "--scale", "2", "--crf", "0"]
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    assert err.count("transparency (alpha) is not kept") == 1 and "composited over black" in err
    for picture, frame in zip(pictures, _frames(out), strict=True):
        over_black = (picture[..., :3] * (picture[..., 3:] / 255)).round().astype(np.uint8)
        expected = np.asarray(Image.fromarray(over_black).resize((128, 96), Image.BICUBIC), float)
        assert np.abs(frame[..., :3] - expected).mean() < 3


def test_a_yuva_frame_composited_over_black_keeps_black_and_the_opaque_colour():
    f = _yuva_frame("garbage")
    o = _alpha_settled(f, keep=False)
    rgb = o.to_ndarray(format="rgba")
    alpha = plane_view(f.planes[3], np.uint8)
    hidden = alpha.reshape(24, 2, 32, 2).max((1, 3)).repeat(2, 0).repeat(2, 1) == 0  # chroma of 2x2 blocks
    assert hidden.sum() > 1000 and rgb[hidden][:, :3].max() <= 2  # black, not the garbage
    inside = np.zeros_like(alpha, bool)
    inside[16:32, 24:40] = True  # well inside the disk: all opaque
    assert np.abs(rgb[inside][:, :3].astype(int) - RED).max() <= 3
