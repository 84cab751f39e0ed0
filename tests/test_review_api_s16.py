"""Review of the Python API (session 16): --half's refusals in its own words, pickling an
upscaler, and the hints of wrong tensor dtypes and of a path given to `upscale`."""

import pickle

import pytest
import torch

import upsample
from upsample.runtime import hardware


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_half_against_an_exact_precision_is_refused_as_the_cli_does(precision):
    """Before: load(half=True, precision="fp32") ran bf16 where the CPU has it, without a word."""
    with pytest.raises(ValueError, match=f"half=True and precision='{precision}' ask for two precisions"):
        upsample.load("espcn-x2", half=True, precision=precision, backend="torch")


def test_half_on_a_cpu_without_bf16_names_half(monkeypatch):
    """Before: "precision='bf16': this CPU has no bf16 units", a precision the caller never gave."""
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: False)
    with pytest.raises(ValueError, match=r"^half=True: this CPU has no bf16 units") as err:
        upsample.load("espcn-x2", half=True)
    assert "precision='bf16'" not in str(err.value)
    assert upsample.load("bicubic", 2, half=True).scale == 2.0  # bicubic has no half: unchanged


def test_an_upscaler_refuses_pickling_in_one_line():
    up = upsample.load("bicubic", 2)
    with pytest.raises(TypeError, match=r"call upsample\.load\(\.\.\.\) in each process"):
        pickle.dumps(up)


@pytest.mark.parametrize("dtype, hint", [(torch.uint16, "65535"), (torch.int64, "by 255"),
                                         (torch.bool, r"x\.float\(\)"), (torch.uint8, "by 255")])
def test_a_non_float_tensor_gets_a_hint_for_its_dtype(dtype, hint):
    with pytest.raises(TypeError, match=hint):
        upsample.load("bicubic", 2)(torch.zeros(1, 3, 4, 4, dtype=dtype))


def test_a_path_given_to_upscale_says_to_open_it(tmp_path):
    with pytest.raises(TypeError, match=r"Image\.open\(path\)"):
        upsample.load("bicubic", 2).upscale(str(tmp_path / "a.png"))


def test_openvino_keeps_a_bounded_number_of_input_shapes(monkeypatch, tmp_path):
    """OpenVINO's CPU plugin kept kernels for 5000 input shapes, ~0.5 MB each: an `upsample.load`
    upscaler fed pictures of many sizes grew by ~50 MB per 100 sizes (a service, by GBs)."""
    import openvino as ov

    from upsample.runtime import cache

    seen = {}

    def compile_model(self, model, device, config):
        seen.update(config)
        raise RuntimeError("stop here")

    monkeypatch.setattr(ov.Core, "compile_model", compile_model)
    with pytest.raises(RuntimeError, match="stop here"):
        cache.ov_compiled(tmp_path / "net.xml")
    assert 0 < seen["CPU_RUNTIME_CACHE_CAPACITY"] <= 64


@pytest.mark.parametrize("precision", ["fp16", "bf16", "int8"])
def test_bicubic_with_another_precision_is_refused(precision, tmp_path):
    """`eval --precision fp16` of bicubic (the default model) ran fp32 without a word."""
    from upsample.cli import main
    from upsample.errors import UserError
    from upsample.inference.load import load_upscaler

    with pytest.raises(UserError, match=f"bicubic runs in fp32 only.*--precision {precision}"):
        load_upscaler("bicubic", scale=2, precision=precision)
    assert main(["eval", "--scale", "2", "--precision", precision, "--data", str(tmp_path)]) == 2
