"""Large inputs decoded in bands of rows (`media.streamed`, libvips): the streamed path is forced
on tiny pictures by a small --max-memory (with a fixed --tile, which the budget cannot size) and
a small strip threshold, and must write the bytes the Pillow path writes; what it cannot read
exactly as Pillow does goes to the Pillow path; a broken file is one `error:` line, no file."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageCms

from upsample import cli
from upsample.inference import api, batch
from upsample.media import imageio, streamed

RNG = np.random.default_rng(7)
SRGB_ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
FORCE = ["--max-memory", "8KB", "--tile", "16"]  # 40x48 gray is 3.8 KB decoded whole, over 2 KB


def rgb(h=40, w=48):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(tmp, name, img: Image.Image, **kw):
    img.save(tmp / name, **kw)
    return tmp / name


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = orientation, "test camera"
    return exif.tobytes()


def _deep_rgb(tmp):
    arr = RNG.integers(0, 65536, (40, 48, 3), dtype=np.uint16)
    imageio.save_planes(imageio.Planes(arr), tmp / "deep.png")
    return tmp / "deep.png"


def _interlaced(tmp):
    """An Adam7 PNG (Pillow writes none; libvips decodes one whole, so it stays with Pillow)."""
    import pyvips
    pyvips.Image.new_from_array(rgb()).copy(interpretation="srgb").pngsave(str(tmp / "a.png"), interlace=True)
    return tmp / "a.png"


def _exif_after_idat(tmp):
    """A PNG with an eXIf chunk after its pixels (Pillow reads it when it decodes the file)."""
    path = _save(tmp, "a.png", Image.fromarray(rgb()))
    data = path.read_bytes()
    body = _exif(1)[6:]
    chunk = imageio._png_chunk(b"eXIf", body)
    path.write_bytes(data[:-12] + chunk + data[-12:])  # before IEND (12 bytes)
    return path


# name -> (maker, streamed?): what libvips reads as Pillow does, and what goes to Pillow.
PICTURES = {
    "rgb png": (lambda t: _save(t, "a.png", Image.fromarray(rgb())), True),
    "gray png": (lambda t: _save(t, "a.png", Image.fromarray(rgb()[..., 0])), True),
    "1-bit png": (lambda t: _save(t, "a.png", Image.fromarray(rgb()[..., 0]).convert("1")), True),
    "palette png": (lambda t: _save(t, "a.png", Image.fromarray(rgb()).quantize(64)), True),
    "16-bit gray png": (lambda t: _save(t, "a.png", Image.fromarray(
        RNG.integers(0, 65536, (40, 48), dtype=np.uint16))), True),
    "16-bit rgb png": (_deep_rgb, True),
    "png with icc and exif": (lambda t: _save(t, "a.png", Image.fromarray(rgb()), exif=_exif(1),
                                              icc_profile=SRGB_ICC), True),
    "rgb jpeg": (lambda t: _save(t, "a.jpg", Image.fromarray(rgb()), quality=90), True),
    "gray jpeg": (lambda t: _save(t, "a.jpg", Image.fromarray(rgb()[..., 0])), True),
    "progressive jpeg": (lambda t: _save(t, "a.jpg", Image.fromarray(rgb()), progressive=True), True),
    "jpeg turned by exif": (lambda t: _save(t, "a.jpg", Image.fromarray(rgb()), exif=_exif(6)), False),
    "interlaced png": (_interlaced, False),
    "png with exif after the pixels": (_exif_after_idat, False),
    "cmyk jpeg": (lambda t: _save(t, "a.jpg", Image.fromarray(rgb()).convert("CMYK")), False),
}


@pytest.fixture
def strips(monkeypatch):
    """Every output goes to PNG in strips of a few rows; records what `open_rows` gave."""
    monkeypatch.setattr(batch, "STREAM_BYTES", 1000)
    monkeypatch.setattr(api, "STRIP_BYTES", 3000)
    taken = []
    real = streamed.open_rows

    def spy(header):
        planes = real(header)
        taken.append(planes is not None)
        return planes
    monkeypatch.setattr(streamed, "open_rows", spy)
    return taken


@pytest.mark.parametrize("case", list(PICTURES))
def test_streamed_output_equals_pillow_path(tmp_path, strips, case):
    make, streams = PICTURES[case]
    src = make(tmp_path)
    args = ["image", str(src), "--model", "bicubic", "--scale", "2"]
    assert cli.main([*args, "-o", str(tmp_path / "pillow.png"), "--tile", "16"]) == 0
    assert strips == [], "no --max-memory: a small picture is decoded whole"
    assert cli.main([*args, "-o", str(tmp_path / "streamed.png"), *FORCE]) == 0
    assert any(strips) == streams, strips
    assert (tmp_path / "pillow.png").read_bytes() == (tmp_path / "streamed.png").read_bytes()


def test_progressive_jpeg_counts_what_its_decoder_holds(tmp_path):
    """libjpeg keeps every coefficient of a progressive JPEG (2 bytes a sample) while its rows are
    read: the memory plan reserves it; a baseline JPEG holds none."""
    img = Image.fromarray(rgb())
    progressive = streamed.probe(_save(tmp_path, "p.jpg", img, progressive=True))
    baseline = streamed.probe(_save(tmp_path, "b.jpg", img))
    assert progressive.held_bytes == 2 * 40 * 48 * 3 and baseline.held_bytes == 0
    assert streamed.open_rows(progressive).color.held_bytes == progressive.held_bytes


def test_picture_that_fits_is_read_by_pillow(tmp_path, strips):
    """Written in strips, but its whole decode fits half the free memory: libvips is not used."""
    src = _save(tmp_path, "a.png", Image.fromarray(rgb()))
    assert cli.main(["image", str(src), "-o", str(tmp_path / "o.png"), "--model", "bicubic"]) == 0
    assert strips == []


def test_alpha_keeps_the_whole_path_and_its_refusal(tmp_path, capsys, strips, monkeypatch):
    """RGBA is written whole (Pillow): over --max-memory it is refused as before, unstreamed (the
    process counted as holding nothing: else an 8 KB budget is refused for the process itself)."""
    monkeypatch.setattr(batch, "resident_bytes", lambda: 0)
    src = _save(tmp_path, "a.png", Image.fromarray(rgb()).convert("RGBA"))
    rc = cli.main(["image", str(src), "-o", str(tmp_path / "o.png"), "--model", "bicubic", *FORCE])
    err = capsys.readouterr().err
    assert rc == 2 and strips == [] and "encoded whole" in err and "Traceback" not in err, err
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_truncated_streamed_file_is_one_error_line(tmp_path, capsys, strips, ext):
    whole = _save(tmp_path, f"whole.{ext}", Image.fromarray(rgb(200, 48)))
    src = tmp_path / f"cut.{ext}"
    src.write_bytes(whole.read_bytes()[:len(whole.read_bytes()) // 2])
    out = tmp_path / "out"
    rc = cli.main(["image", str(src), "-o", str(out), "--model", "bicubic", "--scale", "2", *FORCE])
    err = capsys.readouterr().err
    assert strips == [True], "the header is sound: the streamed path starts, then fails"
    errors = [line for line in err.splitlines() if "error:" in line]
    assert rc == 2 and len(errors) == 1 and "cut." in errors[0], err
    assert "Traceback" not in err and "corrupt" in errors[0]
    assert not [p for p in out.rglob("*") if p.is_file()] if out.exists() else True


def test_rows_are_read_forward_with_overlap(tmp_path):
    arr = rgb(50, 20)
    head = streamed.probe(_save(tmp_path, "a.png", Image.fromarray(arr)))
    rows = streamed.open_rows(head).color
    assert rows.shape == (50, 20, 3) and rows.dtype == np.uint8
    for y0, y1 in [(0, 10), (4, 22), (22, 30), (35, 50), (49, 50)]:  # overlaps, a gap, the end
        assert np.array_equal(rows[y0:y1], arr[y0:y1]), (y0, y1)
    with pytest.raises(ValueError, match="forward"):
        rows[10:20]
