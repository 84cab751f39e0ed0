"""Review s11, damaged and unusual media: EXIF orientation in read_rgb / header_size, and files
damaged on purpose (truncated, bytes flipped, a header with no body) told to the user."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from upsample.errors import UserError
from upsample.media import imageio
from upsample.media.animation import image_frame_count


def _picture(w=40, h=20) -> Image.Image:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (h, w, 3), np.uint8)
    arr[:4, :8] = (255, 0, 0)  # a corner that shows the turn
    return Image.fromarray(arr)


def _with_orientation(img: Image.Image, path, orientation: int, **save) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, exif=exif.tobytes(), **save)


@pytest.mark.parametrize("ext,save", [(".jpg", {"quality": 95}), (".png", {}), (".webp", {"lossless": True}),
                                      (".tif", {})])
def test_read_rgb_turns_an_exif_rotated_picture_upright_as_read_planes_does(tmp_path, ext, save):
    path = tmp_path / f"portrait{ext}"
    _with_orientation(_picture(), path, 6, **save)  # stored 40x20, shown 20x40 (turned 90 degrees right)
    rgb = imageio.read_rgb(path)
    assert rgb.shape == (40, 20, 3)
    assert np.array_equal(rgb, imageio.read_planes(path).color)
    assert imageio.header_size(path) == (20, 40)  # (width, height) as read, to pair or check it


def test_an_orientation_6_jpeg_reads_as_the_photo_turned_right(tmp_path):
    img = _picture()
    path = tmp_path / "phone.jpg"
    _with_orientation(img, path, 6, quality=100, subsampling=0)
    want = np.asarray(img.transpose(Image.Transpose.ROTATE_270))  # 90 degrees clockwise, as cv2.imread
    assert np.abs(imageio.read_rgb(path).astype(int) - want).mean() < 3
    plain = tmp_path / "plain.jpg"
    img.save(plain, quality=100, subsampling=0)
    assert imageio.read_rgb(plain).shape == (20, 40, 3) and imageio.header_size(plain) == (40, 20)


def test_a_16_bit_png_with_an_orientation_is_upright_in_read_rgb_and_header_size(tmp_path):
    deep = (np.asarray(_picture()).astype(np.uint16) * 257)
    path = imageio.save_planes(imageio.Planes(deep, None, {}), tmp_path / "deep.png")
    exif = Image.Exif()
    exif[0x0112] = 8
    data = path.read_bytes()
    chunk = imageio._png_chunk(b"eXIf", exif.tobytes()[6:] if exif.tobytes().startswith(b"Exif") else exif.tobytes())
    end = 8 + 25
    path.write_bytes(data[:end] + chunk + data[end:])
    assert imageio.read_rgb(path).shape == (40, 20, 3)
    assert imageio.header_size(path) == (20, 40)


def test_a_broken_orientation_is_one_error_naming_the_file(tmp_path, monkeypatch):
    path = tmp_path / "odd.jpg"
    _with_orientation(_picture(), path, 6)

    def broken(img):
        raise SyntaxError("not a TIFF header")
    monkeypatch.setattr(imageio.ImageOps, "exif_transpose", broken)
    with pytest.raises(UserError, match="EXIF orientation of .*odd.jpg"):
        imageio.read_rgb(path)


# --- damaged files: each said in one line naming the file, never a traceback or a silent gray picture ---

def _noise_gif(path, frames=4):
    rng = np.random.default_rng(1)
    pics = [Image.fromarray(rng.integers(0, 256, (48, 64, 3), np.uint8)) for _ in range(frames)]
    pics[0].save(path, save_all=True, append_images=pics[1:], duration=100, loop=0)


def test_an_animated_gif_cut_inside_its_frames_is_an_error_naming_it_not_an_index_error(tmp_path):
    whole = tmp_path / "whole.gif"
    _noise_gif(whole)
    cut = tmp_path / "download.gif"
    data = whole.read_bytes()
    cut.write_bytes(data[:data.rfind(b"\x21\xf9") + 1])  # cut right after an extension block's 0x21
    with pytest.raises(UserError, match="download.gif: it ends inside its frames.*copy it again"):
        imageio.open_image(cut)
    assert image_frame_count(cut) in (None, 1, 2, 3)  # no IndexError either


def test_a_jpeg_header_with_no_picture_data_is_refused_not_painted_gray(tmp_path):
    ok = tmp_path / "ok.jpg"
    _picture().save(ok, quality=90, progressive=False)
    data = ok.read_bytes()
    sos = data.find(b"\xff\xda")
    header_end = sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(data[:header_end] + b"\xff\xd9")
    with pytest.raises(UserError, match="empty.jpg: its header is whole but no picture data"):
        imageio.read_rgb(empty)
    assert imageio.read_rgb(ok).shape == (20, 40, 3)


def test_a_tiff_cut_before_its_directory_is_said_cut_short_not_an_odd_layout(tmp_path):
    path = tmp_path / "scan.tif"
    _picture().save(path, compression="tiff_lzw")
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])  # Pillow writes the directory after the pixels
    with pytest.raises(UserError, match="scan.tif: a TIFF whose directory of tags .* cut short") as err:
        imageio.open_image(path)
    assert "layout" not in str(err.value)


@pytest.mark.parametrize("name,data,words", [
    ("clip.png", b"\0\0\0\x20ftypisom\0\0\x02\0isomiso2avc1mp41" + b"\0" * 64, "video file, not a picture"),
    ("clip.jpg", b"\x1a\x45\xdf\xa3" + b"\x01" * 60, "video file, not a picture"),
    ("page.png", b"<html><body>404 Not Found</body></html>\n", "text file, not a picture"),
])
def test_a_video_or_text_named_as_a_picture_says_what_it_is(tmp_path, name, data, words):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(UserError, match=f"{name}: it is a {words}"):
        imageio.open_image(path)


def test_counting_frames_of_a_damaged_tiff_prints_no_python_warning(tmp_path, recwarn):
    path = tmp_path / "cut.tif"
    _picture().save(path)
    data = bytearray(path.read_bytes())
    path.write_bytes(bytes(data[:8]) + b"\xff" * 8 + bytes(data[16:]))  # strip offsets past the end
    image_frame_count(path)
    assert not [w for w in recwarn if "PIL" in w.filename]


def test_a_picture_read_despite_its_decoders_warnings_says_so_once_naming_it(tmp_path, monkeypatch, capsys):
    path = tmp_path / "odd.png"
    _picture().save(path)
    real = Image.open

    def warning_open(*args, **kwargs):
        import warnings
        warnings.warn("Truncated File Read")  # as Pillow's TIFF reader says of a short tag
        return real(*args, **kwargs)
    monkeypatch.setattr(imageio.Image, "open", warning_open)
    imageio.open_image(path, decode=False)
    assert capsys.readouterr().err == ""  # a header look: the reading says it
    assert imageio.open_image(path).size == (40, 20)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "odd.png: the file is damaged (Truncated File Read)" in err


@pytest.mark.parametrize("words", ["Metadata Warning, tag 282 had too many entries: 2, expected 1",
                                   "Image appears to be a malformed MPO file, it will be interpreted as a base JPEG file"])
def test_odd_metadata_of_a_cameras_file_is_not_called_damage(tmp_path, monkeypatch, capsys, words):
    path = tmp_path / "camera.png"
    _picture().save(path)
    real = Image.open

    def warning_open(*args, **kwargs):
        import warnings
        warnings.warn(words)
        return real(*args, **kwargs)
    monkeypatch.setattr(imageio.Image, "open", warning_open)
    assert imageio.open_image(path).size == (40, 20)
    assert capsys.readouterr().err == ""


def test_a_damaged_tiffs_warnings_do_not_reach_the_user_when_it_is_refused(tmp_path, recwarn, capsys):
    path = tmp_path / "cut.tif"
    _picture().save(path, compression="tiff_lzw")
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])  # the directory (after the pixels) gone: Pillow warns, then fails
    with pytest.raises(UserError, match="cut.tif"):
        imageio.open_image(path)
    assert not [w for w in recwarn if "PIL" in w.filename] and "Warning" not in capsys.readouterr().err


def test_a_video_whose_codec_id_is_damaged_says_so_and_what_to_do(tmp_path):
    import av
    from upsample.media.video import open_input
    path = tmp_path / "clip.mkv"
    with av.open(str(path), "w", format="matroska") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 40 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    data = path.read_bytes()
    assert b"V_MPEG4/ISO/ASP" in data
    path.write_bytes(data.replace(b"V_MPEG4/ISO/ASP", b"V_QPEG4/ISO/ASP"))  # one flipped letter
    with pytest.raises(UserError, match="clip.mkv: its header names no codec FFmpeg knows.*copy it again"):
        open_input(path)


def test_pixels_a_decoder_fails_inside_are_called_damaged_with_what_to_do(tmp_path):
    path = tmp_path / "photo.png"
    _picture(64, 48).save(path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])  # header whole, pixels cut
    with pytest.raises(UserError, match="photo.png: its pixel data is damaged or cut short .*copy the file again"):
        imageio.read_rgb(path)


def test_eval_pairs_a_phones_rotated_hr_with_its_upright_lr(tmp_path, capsys):
    """An HR JPEG stored on its side (orientation 6) and the upright LR that cv2/BasicSR would
    write of it: eval reads both upright, so the sizes pair (they were refused as 24x32 vs 32x24)."""
    import json

    from upsample.cli import main
    from upsample.data.colour import to_uint8
    from upsample.data.degrade import make_lr
    hr_dir, lr_dir = tmp_path / "hr", tmp_path / "lr"
    hr_dir.mkdir()
    lr_dir.mkdir()
    _with_orientation(_picture(64, 48), hr_dir / "p.jpg", 6, quality=95)  # shown 48x64
    lr = to_uint8(make_lr(imageio.read_rgb(hr_dir / "p.jpg"), 2))
    Image.fromarray(lr).save(lr_dir / "p.png")
    assert lr.shape[:2] == (32, 24)
    assert main(["eval", "--model", "bicubic", "--scale", "2", "--data", str(hr_dir), "--lr", str(lr_dir),
                 "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)
