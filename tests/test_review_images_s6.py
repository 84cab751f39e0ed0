"""Image files as cameras, scanners, print shops and phones write them (review s6): a CMYK JPEG
with its ICC profile, TIFFs with an orientation tag, pictures over a lossy format's size limit,
files Pillow cannot identify (empty, HEIC, JPEG XL), PNG text chunks over 1 MB."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin, TiffImagePlugin

from upsample import cli
from upsample.errors import UserError
from upsample.media.imageio import Planes, open_image, read_planes, save_planes


def _photo(h: int = 24, w: int = 32) -> np.ndarray:
    """A smooth, in-gamut colour picture (no pure primaries, which CMYK cannot print)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([60 + 120 * x / w, 70 + 110 * y / h, 150 - 60 * x / w + 0 * y], -1).astype(np.uint8)


def _one_error_line(capsys, *needles: str) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "Traceback" not in err[0], err
    for needle in needles:
        assert needle in err[0], err
    return err[0]


# ------------------------------------------------------------------ CMYK JPEG with its profile

def test_a_cmyk_jpeg_is_read_through_its_icc_profile(tmp_path):
    pyvips = pytest.importorskip("pyvips")
    rgb = _photo()
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    cmyk = pyvips.Image.new_from_file(str(tmp_path / "rgb.png")).icc_transform(
        "cmyk", input_profile="srgb", embedded=False)  # libvips' built-in CMYK profile
    cmyk.write_to_file(str(tmp_path / "print.jpg"), Q=98)
    src = Image.open(tmp_path / "print.jpg")
    assert src.mode == "CMYK" and src.info["icc_profile"][16:20] == b"CMYK"
    naive = np.abs(np.asarray(src.convert("RGB"), float) - rgb).mean()
    planes = read_planes(tmp_path / "print.jpg")
    managed = np.abs(planes.color.astype(float) - rgb).mean()
    assert planes.mode == "RGB" and "icc_profile" not in planes.info  # sRGB, untagged
    assert managed < 4 and managed < naive / 2, (managed, naive)


# ------------------------------------------------------------------ TIFF orientation

def _tiff_orientation_tag(o: int):
    info = TiffImagePlugin.ImageFileDirectory_v2()
    info[0x0112] = o
    return info


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("orientation", [6, 8])
def test_an_uncompressed_gray_tiff_with_an_orientation_is_turned_not_scrambled(tmp_path, dtype, orientation):
    gray = (np.arange(24 * 32).reshape(24, 32) * (50 if dtype == np.uint16 else 1) % 251).astype(dtype)
    Image.fromarray(gray).save(tmp_path / "scan.tif", tiffinfo=_tiff_orientation_tag(orientation))
    got = read_planes(tmp_path / "scan.tif").color[..., 0]
    assert np.array_equal(got, np.rot90(gray, -1 if orientation == 6 else 1))


def _tiff16(path: Path, rgb: np.ndarray, orientation: int) -> None:
    """A plain 16-bit RGB TIFF (one strip, little-endian) with an Orientation tag, as raw
    converters write them; Pillow cannot write 16-bit RGB."""
    h, w, _ = rgb.shape
    data = rgb.astype("<u2").tobytes()
    tags = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 3, None), (259, 3, 1, 1), (262, 3, 1, 2),
            (273, 4, 1, None), (274, 3, 1, orientation), (277, 3, 1, 3), (278, 4, 1, h),
            (279, 4, 1, len(data))]
    ifd_end = 8 + 2 + 12 * len(tags) + 4
    bits_at, data_at = ifd_end, ifd_end + 6
    entries = b""
    for tag, kind, count, value in tags:
        value = bits_at if tag == 258 else data_at if tag == 273 else value
        entries += struct.pack("<HHII", tag, kind, count, value)
    path.write_bytes(b"II*\0" + struct.pack("<IH", 8, len(tags)) + entries + b"\0" * 4
                     + struct.pack("<3H", 16, 16, 16) + data)


def test_a_16_bit_rgb_tiff_with_an_orientation_keeps_16_bits_and_is_turned(tmp_path, capsys):
    rgb = _photo().astype(np.uint16) * 257 + 3
    _tiff16(tmp_path / "raw.tif", rgb, 6)
    planes = read_planes(tmp_path / "raw.tif")
    assert planes.mode == "RGB;16", capsys.readouterr().err
    assert np.array_equal(planes.color, np.rot90(rgb, -1))


# ------------------------------------------------------------------ sizes over a format's limit

def test_an_output_wider_than_webp_holds_is_written_as_png(tmp_path):
    planes = Planes(np.full((2, 16400, 3), 90, np.uint8))
    written = save_planes(planes, tmp_path / "wide.webp")
    assert written == tmp_path / "wide.png" and not (tmp_path / "wide.webp").exists()
    assert Image.open(written).size == (16400, 2)


def test_the_png_fallback_never_replaces_an_existing_file(tmp_path):
    (tmp_path / "wide.png").write_bytes(b"mine")
    with pytest.raises(UserError, match="16383 pixels a side"):
        save_planes(Planes(np.full((2, 16400, 3), 90, np.uint8)), tmp_path / "wide.webp")
    assert (tmp_path / "wide.png").read_bytes() == b"mine"


# ------------------------------------------------------------------ files Pillow cannot identify

@pytest.mark.parametrize("head, needle", [
    (b"", "empty (0 bytes)"),
    (b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 64, "HEIC"),
    (b"\xff\x0a\xfa\x7f" + b"\0" * 64, "JPEG XL"),
])
def test_an_unidentified_file_says_what_it_is(tmp_path, capsys, head, needle):
    src = tmp_path / "IMG_0001.jpg"
    src.write_bytes(head)
    with pytest.raises(UserError, match=re.escape(needle)):
        open_image(src)
    assert cli.main(["image", str(src), "-o", str(tmp_path / "out"), "--model", "bicubic",
                     "--scale", "2"]) == 2
    assert "corrupt" not in _one_error_line(capsys, needle)


def test_a_folder_names_why_a_heic_photo_is_skipped(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "IMG_0002.HEIC").write_bytes(b"\0\0\0\x18ftypheic" + b"\0" * 64)
    Image.fromarray(_photo()).save(tmp_path / "in" / "a.png")
    assert cli.main(["image", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", "bicubic",
                     "--scale", "2"]) == 0
    err = capsys.readouterr().err
    assert "IMG_0002.HEIC (HEIC/HEIF pictures are not decoded here" in err, err


# ------------------------------------------------------------------ PNG metadata over 1 MB

def test_a_png_with_a_large_compressed_text_chunk_is_read(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", "<x>" + "<rdf:li>xmp.did:0123456789</rdf:li>" * 60000 + "</x>",
                  zip=True)  # 2 MB inflated: Photoshop's DocumentAncestors bloat
    Image.fromarray(_photo()).save(tmp_path / "edit.png", pnginfo=info)
    assert np.array_equal(read_planes(tmp_path / "edit.png").color, _photo())


# ------------------------------------------------------------------ EXIF a JPEG cannot hold, or broken

def test_exif_over_64_kb_goes_to_a_jpeg_output_without_it_and_says_so(tmp_path, capsys):
    exif = Image.Exif()
    exif[0x010E] = "x" * 70000  # a PNG's eXIf chunk may be that long; a JPEG's APP1 may not
    exif[0x010F] = "Cam"
    Image.fromarray(_photo()).save(tmp_path / "a.png", exif=exif.tobytes())
    written = save_planes(read_planes(tmp_path / "a.png"), tmp_path / "a.jpg")
    assert written == tmp_path / "a.jpg" and Image.open(written).size == (32, 24)
    assert "over the 64 KB a JPEG holds" in capsys.readouterr().err


def test_a_jpeg_with_a_garbage_exif_block_is_upscaled_without_it(tmp_path, capsys):
    Image.fromarray(_photo()).save(tmp_path / "a.jpg", exif=b"Exif\x00\x00garbage")
    assert cli.main(["image", str(tmp_path / "a.jpg"), "-o", str(tmp_path / "out.png"), "--model", "bicubic",
                     "--scale", "2"]) == 0
    err = capsys.readouterr().err
    assert "EXIF block cannot be read" in err and "Traceback" not in err, err
    assert Image.open(tmp_path / "out.png").size == (64, 48)


def test_a_damaged_exif_block_is_one_note_not_python_warnings(tmp_path, capsys, recwarn):
    Image.fromarray(_photo()).save(tmp_path / "a.jpg",
                                   exif=b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff" + b"\x01" * 50)
    assert cli.main(["image", str(tmp_path / "a.jpg"), "-o", str(tmp_path / "out.png"), "--model", "bicubic",
                     "--scale", "2"]) == 0
    err = capsys.readouterr().err
    assert "EXIF block is damaged" in err, err
    assert not [w for w in recwarn if "EXIF" in str(w.message)]  # Python's multi-line warnings


@pytest.mark.parametrize("mode", ["I;16B", "I;16", "F"])
def test_read_rgb_scales_every_deep_gray_layout_to_8_bits(tmp_path, mode):
    """eval and training read 16-bit gray in either byte order (a Mac's TIFF is I;16B) and float
    [0, 1] TIFFs as their 8-bit values, not clipped or cut to the low byte."""
    from upsample.media.imageio import read_rgb
    levels = (np.arange(48 * 48).reshape(48, 48) * 28).astype(np.uint16)
    if mode == "F":
        img = Image.fromarray((levels / 65535.0).astype(np.float32), "F")
    else:
        img = Image.frombytes(mode, (48, 48), levels.astype(">u2" if mode == "I;16B" else "<u2").tobytes())
    img.save(tmp_path / "gray.tif")
    rgb = read_rgb(tmp_path / "gray.tif")
    assert rgb.shape == (48, 48, 3)
    assert np.abs(rgb[..., 0].astype(int) - np.round(levels / 257.0)).max() == 0


def test_read_rgb_keeps_a_float_tiff_on_the_8_bit_scale(tmp_path):
    """A float TIFF in 0..255 (8-bit levels stored as floats) is read as those levels, as before
    [0, 1] floats were read: not refused as out of range."""
    from upsample.media.imageio import read_rgb
    levels = np.linspace(60, 250, 48 * 48, dtype=np.float32).reshape(48, 48)
    Image.fromarray(levels, "F").save(tmp_path / "f.tif")
    assert np.abs(read_rgb(tmp_path / "f.tif")[..., 0].astype(int) - np.round(levels)).max() <= 1
