"""Image files as other tools write them (review s9): BMPs whose pixels are laid out by bit masks
with alpha (GIMP, Photoshop, Windows CE), transparent pixels whose hidden colour would bleed into
the visible edge when upscaled, reruns beside outputs over the decompression-bomb limit, and
float TIFF layouts Pillow cannot decode."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import upsample
from upsample import cli
from upsample.media.imageio import Planes, fill_hidden_colour, header_size, read_planes



def one_error_line(capsys, *needles: str) -> str:
    """The one error line of a command (its other lines are counts and notes), no traceback."""
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "Traceback" not in err[0], err
    for needle in needles:
        assert needle in err[0], err
    return err[0]

# ------------------------------------------------------------------ BMP with bit masks and alpha

def _bmp(path: Path, values: np.ndarray, bpp: int, masks: tuple[int, int, int, int], *,
         header: int = 124, compression: int = 3) -> None:
    """A bottom-up BMP of packed pixel `values` (HxW ints) with the (R, G, B, A) `masks`: in a V3
    (56), V4 (108) or V5 (124) header, or after a 40-byte one (BI_ALPHABITFIELDS: all four)."""
    h, w = values.shape
    stride = (w * bpp + 31) // 32 * 4
    rows = values.astype("<u2" if bpp == 16 else "<u4")[::-1]
    data = b"".join(r.tobytes().ljust(stride, b"\0") for r in rows)
    dib = struct.pack("<IiiHHIIiiII", header, w, h, 1, bpp, compression, len(data), 2835, 2835, 0, 0)
    tail = struct.pack("<4I", *masks)
    if header == 40:
        dib += tail[:16 if compression == 6 else 12]
    else:
        dib += tail + (b"BGRs" + bytes(48) + struct.pack("<4I", 4, 0, 0, 0))[:header - 56]
    offset = 14 + len(dib)
    path.write_bytes(b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset) + dib + data)


def _pack(rgba: np.ndarray, masks) -> np.ndarray:
    out = np.zeros(rgba.shape[:2], np.uint64)
    for c, m in enumerate(masks):
        if m:
            low = (m & -m).bit_length() - 1
            top = m >> low
            out |= ((rgba[..., c].astype(np.uint64) * top + 127) // 255) << low
    return out


_RGBA = np.random.default_rng(0).integers(1, 256, (5, 7, 4), dtype=np.uint8)


@pytest.mark.parametrize("masks, header, compression", [
    ((0xFF0000, 0xFF00, 0xFF, 0xFF000000), 124, 3),   # GIMP / Photoshop A8R8G8B8, V5
    ((0xFF0000, 0xFF00, 0xFF, 0xFF000000), 56, 3),    # Photoshop's V3 header
    ((0xFF00, 0xFF0000, 0xFF000000, 0xFF), 108, 3),   # B8G8R8A8 byte order: refused by Pillow
    ((0xFF0000, 0xFF00, 0xFF, 0xFF000000), 40, 6),    # BI_ALPHABITFIELDS: refused by Pillow
])
def test_a_32_bit_bmp_with_an_alpha_mask_keeps_its_alpha(tmp_path, masks, header, compression):
    _bmp(tmp_path / "a.bmp", _pack(_RGBA, masks), 32, masks, header=header, compression=compression)
    planes = read_planes(tmp_path / "a.bmp")
    assert planes.mode == "RGBA"
    assert np.array_equal(planes.alpha[..., 0], _RGBA[..., 3])
    assert np.array_equal(planes.color, _RGBA[..., :3])  # no pixel is fully transparent


@pytest.mark.parametrize("masks", [(0x7C00, 0x3E0, 0x1F, 0x8000), (0xF00, 0xF0, 0xF, 0xF000)])
def test_a_16_bit_bmp_with_an_alpha_mask_keeps_its_alpha(tmp_path, masks):
    """A1R5G5B5 (Pillow read it opaque) and A4R4G4B4 (Pillow refused it)."""
    rgba = _RGBA.copy()
    rgba[..., 3] = np.where(rgba[..., 3] > 128, 255, 0) if masks[3] == 0x8000 else rgba[..., 3]
    _bmp(tmp_path / "a.bmp", _pack(rgba, masks), 16, masks)
    planes = read_planes(tmp_path / "a.bmp")
    alpha_bits = bin(masks[3]).count("1")
    expect = (rgba[..., 3].astype(int) * (2 ** alpha_bits - 1) + 127) // 255 * 255 // (2 ** alpha_bits - 1)
    assert planes.mode == "RGBA" and np.abs(planes.alpha[..., 0].astype(int) - expect).max() <= 1
    visible = planes.alpha[..., 0] > 0
    assert np.abs(planes.color.astype(int) - rgba[..., :3])[visible].max() <= 255 // 15 // 2 + 1  # 4-5 bits


@pytest.mark.parametrize("bpp, masks", [(32, (0xFF0000, 0xFF00, 0xFF, 0)), (16, (0xF800, 0x7E0, 0x1F, 0))])
def test_a_bit_mask_bmp_without_alpha_reads_as_pillow_reads_it(tmp_path, bpp, masks):
    _bmp(tmp_path / "a.bmp", _pack(_RGBA, masks), bpp, masks, header=40)
    planes = read_planes(tmp_path / "a.bmp")
    with Image.open(tmp_path / "a.bmp") as img:  # Pillow floors 5 and 6 bits to 8 (30 -> 246, not 247)
        pillow = np.asarray(img.convert("RGB")).astype(int)
    assert planes.mode == "RGB" and np.abs(planes.color - pillow).max() <= (bpp == 16)


def test_a_bmp_whose_alpha_is_0_everywhere_is_read_opaque(tmp_path, capsys):
    """A writer that declares an alpha mask but leaves the byte 0: shown opaque, as browsers show
    it, not a wholly transparent upscale."""
    rgba = _RGBA.copy()
    rgba[..., 3] = 0
    masks = (0xFF0000, 0xFF00, 0xFF, 0xFF000000)
    _bmp(tmp_path / "a.bmp", _pack(rgba, masks), 32, masks)
    planes = read_planes(tmp_path / "a.bmp")
    assert planes.mode == "RGB" and np.array_equal(planes.color, rgba[..., :3])
    assert "read as opaque" in capsys.readouterr().err
    assert cli.main(["image", str(tmp_path / "a.bmp"), "-o", str(tmp_path / "o.png"), "--model", "bicubic"]) == 0
    assert capsys.readouterr().err.count("read as opaque") == 1  # not again for the header's look
    assert Image.open(tmp_path / "o.png").mode == "RGB"


@pytest.mark.parametrize("masks, words", [((0xFF0000, 0xFF00, 0xFF, 0xFF000000), "truncated"),  # Pillow reads it
                                           ((0xFF00, 0xFF0000, 0xFF000000, 0xFF), "cut short")])  # read here
def test_a_bmp_cut_short_is_one_error_line(tmp_path, capsys, masks, words):
    _bmp(tmp_path / "a.bmp", _pack(_RGBA, masks), 32, masks)
    (tmp_path / "a.bmp").write_bytes((tmp_path / "a.bmp").read_bytes()[:-20])
    assert cli.main(["image", str(tmp_path / "a.bmp"), "-o", str(tmp_path / "out.png"), "--model", "bicubic"]) == 2
    one_error_line(capsys, "a.bmp", words)


# ------------------------------------------------------------------ hidden colour of transparent pixels

def _sprite(hidden: str, n: int = 32) -> np.ndarray:
    """A red anti-aliased disk on a transparent ground whose colour is `hidden`."""
    y, x = np.mgrid[0:n, 0:n]
    alpha = np.clip((n / 3 - np.hypot(y - n / 2 + .5, x - n / 2 + .5)) * 170, 0, 255).astype(np.uint8)
    rgb = np.empty((n, n, 3), np.uint8)
    rgb[:] = (220, 40, 30)
    ground = {"black": np.zeros((n, n, 3)), "garbage": np.random.default_rng(1).integers(0, 256, (n, n, 3))}[hidden]
    rgb[alpha == 0] = ground[alpha == 0]
    return np.dstack([rgb, alpha])


def _halo(rgba: np.ndarray) -> float:
    """How far the visible pixels' colour strays from the disk's, weighted by their alpha."""
    a = rgba[..., 3] / 255
    stray = np.abs(rgba[..., :3].astype(float) - (220, 40, 30)).mean(2)
    return float((stray * a).sum() / a.sum())


@pytest.mark.parametrize("hidden", ["black", "garbage"])
def test_the_hidden_colour_of_transparent_pixels_does_not_fringe_the_edge(hidden):
    sprite = _sprite(hidden)
    up = upsample.load("bicubic", scale=2)
    raw = up.upscale_planes(Planes(sprite[..., :3].copy(), sprite[..., 3:].copy()))  # colour as given
    raw = np.concatenate([raw.color, raw.alpha], 2)
    filled = np.asarray(up.upscale(Image.fromarray(sprite, "RGBA")))
    assert _halo(raw) > 0.3  # the sprite does show the fringe
    assert _halo(filled) < 0.01 and np.array_equal(filled[..., 3], raw[..., 3])
    assert np.array_equal(up.upscale(sprite), filled)  # an RGBA array is filled as a PIL image is


def test_the_fill_changes_only_fully_transparent_pixels():
    rng = np.random.default_rng(2)
    color = rng.integers(0, 65536, (9, 11, 3), dtype=np.uint16)
    alpha = rng.choice(np.array([0, 1, 65535], np.uint16), (9, 11, 1))
    out = fill_hidden_colour(Planes(color, alpha, {"x": 1}))
    visible = alpha[..., 0] > 0
    assert np.array_equal(out.color[visible], color[visible]) and out.alpha is alpha and out.info == {"x": 1}
    assert set(map(tuple, out.color[~visible])) <= set(map(tuple, color[visible]))  # a visible pixel's colour


def test_a_png_sprite_upscaled_by_the_command_has_no_dark_fringe(tmp_path):
    Image.fromarray(_sprite("black"), "RGBA").save(tmp_path / "s.png")
    assert cli.main(["image", str(tmp_path / "s.png"), "-o", str(tmp_path / "o.png"), "--model", "bicubic"]) == 0
    assert _halo(np.asarray(Image.open(tmp_path / "o.png"))) < 0.01


# ------------------------------------------------------------------ reruns beside large outputs

def test_a_rerun_knows_its_outputs_over_the_pixel_limit(tmp_path, capsys, monkeypatch):
    """An x4 output of a 12 Mpx photo is over Pillow's decompression-bomb limit: a rerun read it
    as a new input (and failed on its size, or with --max-pixels 0 upscaled it again)."""
    Image.fromarray(_RGBA[..., :3].repeat(6, 0).repeat(6, 1)).save(tmp_path / "a.png")  # 42x30
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # the input is under 2 x 2000 px, the output over
    args = ["image", str(tmp_path), "-o", str(tmp_path), "--suffix", "_up", "--model", "bicubic"]
    assert cli.main(args) == 0 and header_size(tmp_path / "a_up.png") == (84, 60)
    capsys.readouterr()
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    assert "0 written, 2 skipped, 0 failed" in err and "error" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "a_up.png"]


# ------------------------------------------------------------------ TIFF layouts Pillow cannot decode

def _float_tiff(path: Path, arr: np.ndarray) -> None:
    """An uncompressed little-endian TIFF of float samples (SampleFormat 3), one strip."""
    h, w = arr.shape[:2]
    spp = arr.shape[2] if arr.ndim == 3 else 1
    data = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    tags = [(256, 4, w), (257, 4, h), (258, 3, arr.dtype.itemsize * 8), (259, 3, 1), (262, 3, 2 if spp == 3 else 1),
            (273, 4, 0), (277, 3, spp), (278, 4, h), (279, 4, len(data)), (339, 3, 3)]
    offset = 8 + 2 + 12 * len(tags) + 4
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHI", tag, kind, 1) + struct.pack("<I" if kind == 4 else "<HH", *(
            [offset if tag == 273 else v] if kind == 4 else [v, 0])) for tag, kind, v in tags)
    path.write_bytes(b"II*\0" + struct.pack("<I", 8) + ifd + b"\0\0\0\0" + data)


@pytest.mark.parametrize("shape, dtype, words", [((4, 5), np.float16, "1 x 16-bit floating-point"),
                                                 ((4, 5, 3), np.float32, "3 x 32-bit floating-point")])
def test_a_float_tiff_pillow_cannot_decode_is_named_not_called_corrupt(tmp_path, capsys, shape, dtype, words):
    _float_tiff(tmp_path / "f.tif", np.full(shape, 0.5, dtype))
    assert cli.main(["image", str(tmp_path / "f.tif"), "-o", str(tmp_path / "o.png"), "--model", "bicubic"]) == 2
    line = one_error_line(capsys, "f.tif", words, "16-bit integer")
    assert "corrupt" not in line


def test_the_size_of_a_bmp_pillow_refuses_is_known_for_reruns(tmp_path):
    """`header_size` finds earlier outputs by their size against their source's."""
    masks = (0xFF0000, 0xFF00, 0xFF, 0xFF000000)
    _bmp(tmp_path / "a.bmp", _pack(_RGBA, masks), 32, masks, header=40, compression=6)
    with pytest.raises(Exception):
        Image.open(tmp_path / "a.bmp").load()  # BI_ALPHABITFIELDS: Pillow's "unsupported"
    assert header_size(tmp_path / "a.bmp") == (7, 5)


def test_the_png_fallback_note_names_the_picture(tmp_path, capsys):
    """In a batch the "wrote" lines go to stdout: the note on stderr says which picture went to PNG."""
    for name in ("a", "b"):
        Image.fromarray(_sprite("black"), "RGBA").save(tmp_path / f"{name}.png")
    assert cli.main(["image", str(tmp_path), "-o", str(tmp_path / "out"), "--ext", "jpg", "--model", "bicubic"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "wrote PNG" in line]
    assert len(notes) == 2 and "a.png: .jpg cannot hold" in notes[0] and "b.png" in notes[1], notes
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_x2.png", "b_x2.png"]


def _planar_tiff16(path: Path, rgb: np.ndarray) -> None:
    """An uncompressed 16-bit RGB TIFF stored plane by plane (PlanarConfiguration 2)."""
    h, w, _ = rgb.shape
    plane = h * w * 2
    tags = [(256, 4, [w]), (257, 4, [h]), (258, 3, [16] * 3), (259, 3, [1]), (262, 3, [2]), (273, 4, [0, 0, 0]),
            (277, 3, [3]), (278, 4, [h]), (279, 4, [plane] * 3), (284, 3, [2])]
    ext_at = 8 + 2 + 12 * len(tags) + 4
    values = {258: struct.pack("<3H", 16, 16, 16), 279: struct.pack("<3I", *[plane] * 3)}
    data_at = ext_at + 6 + 12 + 12
    values[273] = struct.pack("<3I", *(data_at + i * plane for i in range(3)))
    ifd, ext = struct.pack("<H", len(tags)), b""
    for tag, kind, vals in tags:
        if tag in values:
            ifd += struct.pack("<HHII", tag, kind, len(vals), ext_at + len(ext))
            ext += values[tag]
        else:
            padded = vals + [0] * (kind == 3)  # a SHORT fills half of the value's 4 bytes
            ifd += struct.pack("<HHI", tag, kind, 1) + struct.pack("<I" if kind == 4 else "<HH", *padded)
    data = np.moveaxis(rgb.astype("<u2"), 2, 0).tobytes()
    path.write_bytes(b"II*\0" + struct.pack("<I", 8) + ifd + b"\0\0\0\0" + ext + data)


def test_a_16_bit_tiff_stored_plane_by_plane_is_read_exactly(tmp_path):
    """Pillow reads its 16-bit planes as 8-bit ones (pixels scrambled): that reading was the
    fallback taken when FFmpeg's exact one "differed" from it."""
    y, x = np.mgrid[0:6, 0:8]
    rgb = np.stack([x * 8000, y * 9000, (x + y) * 4000 + 7], -1).astype(np.uint16)
    _planar_tiff16(tmp_path / "p.tif", rgb)
    planes = read_planes(tmp_path / "p.tif")
    assert planes.mode == "RGB;16" and np.array_equal(planes.color, rgb)
