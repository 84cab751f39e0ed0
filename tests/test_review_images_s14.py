"""Image files as cameras, browsers and editors write them (review s14): interlaced 16-bit PNGs
(FFmpeg's decoder garbled their rows, or aborted the process), the resolution and EXIF size of
the source kept right in the output, browsers' .jfif names in a folder, and the summary line of
an output written as PNG under another name."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from upsample import cli
from upsample.media.imageio import read_planes, save_planes


def _deep_png(path, arr: np.ndarray, *, interlace: bool) -> None:
    """A 16-bit PNG of `arr` (HxWx2 gray + alpha, HxWx3 RGB or HxWx4 RGBA) written by libvips."""
    import pyvips
    h, w, bands = arr.shape
    image = pyvips.Image.new_from_memory(np.ascontiguousarray(arr).tobytes(), w, h, bands, "ushort")
    image.copy(interpretation="grey16" if bands == 2 else "rgb16").pngsave(str(path), interlace=interlace,
                                                                             bitdepth=16)


@pytest.mark.parametrize("bands", [2, 3, 4])
@pytest.mark.parametrize("interlace", [False, True])
def test_16_bit_pngs_are_read_exactly_interlaced_or_not(tmp_path, bands, interlace):
    arr = np.random.default_rng(bands).integers(0, 65536, (48, 72, bands)).astype(np.uint16)
    _deep_png(tmp_path / "in.png", arr, interlace=interlace)
    planes = read_planes(tmp_path / "in.png", fill_hidden=False)
    assert planes.mode == {2: "LA;16", 3: "RGB;16", 4: "RGBA;16"}[bands]
    assert np.array_equal(planes.color, arr[..., :1] if bands == 2 else arr[..., :3])
    assert (planes.alpha is None) == (bands == 3)
    if planes.alpha is not None:
        assert np.array_equal(planes.alpha, arr[..., -1:])


def test_a_16_bit_png_is_written_with_the_sources_resolution_and_no_bogus_aspect(tmp_path):
    arr = np.random.default_rng(0).integers(0, 65536, (20, 30, 3)).astype(np.uint16)
    _deep_png(tmp_path / "in.png", arr, interlace=False)
    planes = read_planes(tmp_path / "in.png")
    save_planes(planes, tmp_path / "out.png")
    with Image.open(tmp_path / "out.png") as out:
        assert "aspect" not in out.info  # FFmpeg's encoder wrote a pHYs of 0:1, unit 0
        assert out.info.get("dpi") == pytest.approx(Image.open(tmp_path / "in.png").info["dpi"], abs=0.01)
    planes.info.pop("dpi")
    save_planes(planes, tmp_path / "none.png")
    with Image.open(tmp_path / "none.png") as out:
        assert "dpi" not in out.info and "aspect" not in out.info


def _camera_jpeg(path) -> None:
    exif = Image.Exif()
    exif[0x0110] = "Camera"
    sub = exif.get_ifd(0x8769)
    sub[0xA002], sub[0xA003] = 36, 24  # PixelXDimension, PixelYDimension
    pixels = (np.random.default_rng(1).random((24, 36, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, dpi=(300, 300), exif=exif.tobytes(), quality=95)


@pytest.mark.parametrize("ext", ["png", "jpg", "webp"])
def test_resolution_is_kept_and_the_exif_size_is_the_outputs(tmp_path, ext):
    _camera_jpeg(tmp_path / "cam.jpg")
    out = tmp_path / f"cam_x2.{ext}"
    assert cli.main(["image", str(tmp_path / "cam.jpg"), "-o", str(out), "--model", "bicubic", "--scale", "2"]) == 0
    with Image.open(out) as img:
        assert img.size == (72, 48)
        exif = img.getexif()
        assert exif[0x0110] == "Camera"
        sub = exif.get_ifd(0x8769)
        assert (sub[0xA002], sub[0xA003]) == (72, 48)
        if ext != "webp":  # WebP has no resolution field of its own
            assert img.info["dpi"] == pytest.approx((300, 300), abs=0.01)


def test_a_browsers_jfif_in_a_folder_is_upscaled(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    _camera_jpeg(tmp_path / "in" / "saved.jfif")
    assert cli.main(["image", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", "bicubic",
                     "--scale", "2"]) == 0
    assert (tmp_path / "out" / "saved_x2.png").is_file()
    assert "not an image file" not in capsys.readouterr().err


def test_the_summary_names_the_png_written_for_a_jpeg_that_cannot_hold_it(tmp_path, capsys):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[:4, :, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "in.png")
    assert cli.main(["image", str(tmp_path / "in.png"), "-o", str(tmp_path / "a.jpg"), "--model", "bicubic",
                     "--scale", "2"]) == 0
    assert (tmp_path / "a.png").is_file() and not (tmp_path / "a.jpg").exists()
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("1 written") and last.endswith(f"-> {tmp_path / 'a.png'}"), last


def test_a_png_fallback_never_replaces_its_input_even_with_overwrite(tmp_path, capsys):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    before = (tmp_path / "a.png").read_bytes()
    for extra in ([], ["--overwrite"]):
        assert cli.main(["image", str(tmp_path / "a.png"), "-o", str(tmp_path / "a.jpg"), "--model", "bicubic",
                         "--scale", "2", *extra]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert len(err) == 1 and "is this input" in err[0], err
    assert (tmp_path / "a.png").read_bytes() == before and not (tmp_path / "a.jpg").exists()
