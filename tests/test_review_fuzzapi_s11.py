"""The Python API fuzzed with what callers pass by mistake or by habit: tensors holding NaN or
0..255 values, big-endian arrays, closed or cut-short PIL images, a memory limit as a bare number
(review, session 11)."""

import numpy as np
import pytest
import torch
from PIL import Image

import upsample


@pytest.fixture(scope="module")
def bicubic():
    return upsample.load("bicubic", 2, backend="torch")


def test_a_tensor_with_one_nan_is_refused_rather_than_spread_over_the_output(bicubic):
    """One NaN pixel came back as a wholly NaN image (the bicubic resize mixes whole rows and
    columns); an infinity likewise. Now a ValueError saying how to clean it."""
    x = torch.rand(1, 3, 8, 8)
    x[0, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite.*nan_to_num"):
        bicubic(x)
    with pytest.raises(ValueError, match="NaN or infinite"):
        bicubic(torch.full((3, 4, 4), float("inf"), dtype=torch.float16))


def test_a_0_255_tensor_is_refused_but_a_slight_overshoot_is_clamped(bicubic):
    """A float tensor of 0..255 values came back clamped to a white image without a word."""
    with pytest.raises(ValueError, match=r"not \[0, 1\]: divide 0..255 data by 255"):
        bicubic(torch.rand(1, 3, 8, 8) * 255)
    overshot = torch.rand(1, 3, 8, 8) * 1.1 - 0.05  # another network's unclamped output
    out = bicubic(overshot)
    assert out.shape == (1, 3, 16, 16) and out.min() >= 0 and out.max() <= 1


def test_a_big_endian_uint16_array_comes_back_in_its_own_dtype(bicubic):
    """'Same dtype' was broken for a FITS / raw file's >u2 array: it came back native uint16."""
    a = np.random.default_rng(0).integers(0, 65536, (5, 7, 3)).astype(">u2")
    out = bicubic.upscale(a)
    assert out.dtype == np.dtype(">u2") and out.shape == (10, 14, 3)
    assert np.array_equal(out, bicubic.upscale(a.astype(np.uint16)))


def test_a_closed_pil_image_is_a_value_error_saying_what_to_do(bicubic, tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (6, 5), (10, 20, 30)).save(path)
    with Image.open(path) as img:
        pass  # the `with` block closed it before the call
    with pytest.raises(ValueError, match="closed.*img.copy"):
        bicubic.upscale(img)


def test_a_pil_image_of_a_cut_file_is_a_value_error_not_an_oserror(bicubic, tmp_path, capsys):
    """A lazily opened, truncated PNG raised Pillow's bare OSError (and printed an EXIF note)."""
    path = tmp_path / "cut.png"
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    path.write_bytes(path.read_bytes()[:4000])
    with pytest.raises(ValueError, match="cannot be decoded .*truncated.*LOAD_TRUNCATED_IMAGES"):
        bicubic.upscale(Image.open(path))
    assert "EXIF" not in capsys.readouterr().err


def test_max_memory_as_a_switch_or_a_bare_small_number_is_refused_before_loading():
    """True and 1.5 were taken as limits of one byte, and said 'max_memory=0 MB' at upscale."""
    with pytest.raises(TypeError, match="max_memory must be a size"):
        upsample.load("bicubic", 2, backend="torch", max_memory=True)
    with pytest.raises(ValueError, match="max_memory='1.5GB'"):
        upsample.load("bicubic", 2, backend="torch", max_memory=1.5)
    assert upsample.load("bicubic", 2, backend="torch", max_memory=2 * 10**9).scale == 2


def test_an_int64_array_is_told_how_to_become_uint8(bicubic):
    """np.array([[...]]) and arithmetic on uint8 give int64: the refusal named no way out."""
    with pytest.raises(TypeError, match=r"got int64; .*a.astype\(np.uint8\)"):
        bicubic.upscale(np.zeros((4, 4, 3), np.int64))
    with pytest.raises(TypeError, match=r"got uint32; .*a.astype\(np.uint16\)"):
        bicubic.upscale(np.zeros((4, 4), np.uint32))


def test_an_unknown_or_empty_device_is_named_as_a_keyword():
    """'device mps: not on this machine' and 'device : not on ...' read as broken sentences."""
    with pytest.raises(ValueError, match=r"^device='mps': not on this machine"):
        upsample.load("bicubic", 2, backend="torch", device="mps")
    with pytest.raises(ValueError, match="the device name is empty"):
        upsample.load("bicubic", 2, backend="torch", device=" ")
