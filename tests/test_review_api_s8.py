"""The Python API as a library user meets it: `upsample.load(...)` and `.upscale(...)` with the
arguments and images that notebooks, services and scripts pass (review, session 8)."""

import threading

import numpy as np
import pytest
import torch
from PIL import Image

import upsample
from upsample.inference.api import in_keywords
from upsample.inference.upscaler import BicubicUpscaler
from upsample.inference.wrappers import ResizedUpscaler, half_upscaler


@pytest.fixture(scope="module")
def bicubic():
    return upsample.load("bicubic", 2, backend="torch")


def test_errors_while_upscaling_are_value_errors_in_keywords(bicubic):
    """A float PIL image out of [0, 1], an I image with negative values and a memory limit too
    small were plain UserErrors (not ValueError: `except ValueError` missed them), and the limit's
    said '--max-memory'."""
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bicubic.upscale(Image.fromarray(np.full((4, 4), 7.5, np.float32), "F"))
    with pytest.raises(ValueError, match="0..65535"):
        bicubic.upscale(Image.fromarray(np.full((4, 4), -3, np.int32), "I"))
    tight = upsample.load("bicubic", 2, backend="torch", max_memory="1MB")
    with pytest.raises(ValueError) as err:
        tight.upscale(np.zeros((64, 64, 3), np.uint8))
    assert "max_memory=" in str(err.value) and "--max-memory" not in str(err.value)


def test_tensors_without_values_or_dense_layout_are_refused_in_one_line(bicubic):
    with pytest.raises(ValueError, match="'meta'"):  # was NotImplementedError from torch
        bicubic(torch.empty(1, 3, 8, 8, device="meta"))
    with pytest.raises(TypeError, match="to_dense"):  # was torch's page-long dispatcher error
        bicubic(torch.rand(1, 3, 4, 4).to_sparse())


def test_channels_last_tensors_and_channels_first_arrays_are_told_how_to_turn(bicubic):
    with pytest.raises(TypeError, match=r"permute\(0, 3, 1, 2\)"):
        bicubic(torch.rand(2, 8, 8, 3))
    with pytest.raises(TypeError, match=r"permute\(2, 0, 1\)"):
        bicubic(torch.rand(8, 8, 3))
    with pytest.raises(TypeError, match="RGBA"):  # four channels: not a layout mistake
        bicubic(torch.rand(1, 4, 8, 8))
    with pytest.raises(TypeError, match=r"transpose\(1, 2, 0\)"):
        bicubic.upscale(np.zeros((3, 20, 24), np.uint8))


def test_float_and_bool_arrays_are_told_what_to_pass(bicubic):
    with pytest.raises(TypeError, match=r"\* 255"):
        bicubic.upscale(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(TypeError, match="mask"):
        bicubic.upscale(np.zeros((8, 8), bool))


def test_strided_views_give_what_their_copies_give(bicubic):
    img = np.random.default_rng(0).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    view = img[::-1, ::2]
    assert np.array_equal(bicubic.upscale(view), bicubic.upscale(np.ascontiguousarray(view)))


def test_torch_devices_are_taken_as_torch_users_write_them():
    """torch.device("cpu") was a TypeError and "cpu:0" an OpenVINO device 'not on this machine'."""
    for device in (torch.device("cpu"), torch.device("cpu", 0), "cpu:0"):
        up = upsample.load("bicubic", 2, device=device)
        assert up.up.device == torch.device("cpu")


def test_switches_take_only_booleans():
    """allow_untrained="no" (a string from a config) ran random weights; half="no" ran bf16."""
    with pytest.raises(TypeError, match="allow_untrained must be True or False"):
        upsample.load("vapsr-x2", allow_untrained="no")
    with pytest.raises(TypeError, match="half must be True or False"):
        upsample.load("bicubic", 2, half="no")
    with pytest.raises(TypeError, match="scale must be a number"):  # True was scale 1: bicubic x1
        upsample.load(scale=True)


def test_model_name_mistakes_are_named():
    with pytest.raises(ValueError, match="empty"):  # was "not a checkpoint file: ."
        upsample.load("")
    with pytest.raises(TypeError, match=r"load\(scale=4\)"):
        upsample.load(4)


def test_untrained_models_are_refused_unless_allowed(monkeypatch):
    monkeypatch.delenv("UPSAMPLE_ALLOW_UNTRAINED", raising=False)
    with pytest.raises(ValueError, match="allow_untrained=True"):
        upsample.load("vapsr-x2", backend="torch")


def test_cli_model_option_reads_as_the_load_keyword():
    text = in_keywords("or export it to .onnx (runs with --model file.onnx)")
    assert text.endswith("(runs with spec='file.onnx')")


def test_wrappers_report_what_runs_the_network():
    up = half_upscaler(upsample.load("espcn-x2", backend="torch").up)
    assert up.precision == "bf16"  # was the class's "fp32"
    resized = ResizedUpscaler(up, 3)
    assert (resized.precision, resized.runtime) == ("bf16", "torch")
    assert half_upscaler(BicubicUpscaler(2)).precision == "fp32"


def test_two_threads_loading_on_a_cold_cache_both_get_an_upscaler(tmp_path, monkeypatch):
    """A web service's first two requests: both exported the network at once and one failed with
    torch.onnx's "GLOBALS.in_onnx_export must be ..." AssertionError."""
    monkeypatch.setenv("UPSAMPLE_CACHE", str(tmp_path))
    barrier, results = threading.Barrier(2), []

    def load():
        barrier.wait()
        try:
            results.append(upsample.load("espcn-x2", backend="onnxruntime").upscale(np.zeros((6, 6), np.uint8)).shape)
        except Exception as exc:  # noqa: BLE001 - the failure is what is asserted on
            results.append(repr(exc))

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [(12, 12), (12, 12)]


def test_16_bit_gray_with_a_transparent_value_is_refused_before_the_work_with_a_way_out(bicubic):
    """A 16-bit gray PNG with tRNS, as PIL opens it: upscaled whole, then 'cannot be written by
    Pillow; use numpy arrays' without saying how."""
    a = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    img = Image.fromarray(a)
    img.info["transparency"] = 0
    with pytest.raises(ValueError, match=r"transparent value \(0\)") as err:
        bicubic.upscale(img)
    assert "np.dstack([a, np.where(a == 0, 0, 65535)])" in str(err.value)
    out = bicubic.upscale(np.dstack([a, np.where(a == 0, 0, 65535)]).astype(np.uint16))  # the way out
    assert out.shape == (16, 16, 2) and out.dtype == np.uint16
    del img.info["transparency"]
    assert bicubic.upscale(img).mode == "I;16"


def test_the_upscaler_says_what_it_runs(bicubic):
    assert repr(bicubic) == "ImageUpscaler(bicubic x2, torch fp32, cpu)"  # was <... object at 0x...>
