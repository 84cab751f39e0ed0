"""Review of the runtimes (s8): the least side of an exported uint8 graph in its I/O contract, and
cache entries damaged at their full length (zeros where a crash left no data), which OpenVINO and
onnxruntime read without a complaint: the picture came out wrong (240 levels off)."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from upsample.inference.api import ImageUpscaler
from upsample.inference.upscaler import ModelUpscaler
from upsample.models.registry import create_model
from upsample.runtime import auto, cache, export
from upsample.runtime.kinds import Backend
from upsample.runtime.pytorch import torch_runner
from upsample.runtime.sessions import file_session


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UPSAMPLE_CACHE", str(tmp_path / "cache"))


def espcn():
    torch.manual_seed(0)
    return create_model("espcn-x2").eval()


def zero_tail(path):
    """Zeros over the second half of `path`, in place and at its length (what a machine that
    crashed before the data reached the disk leaves)."""
    n = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(n // 2)
        f.write(b"\0" * (n - n // 2))


def torch_image_upscaler(model, scale):
    """`upsample image --backend torch` on `model` (the reference of the uint8 contract)."""
    up = ModelUpscaler.from_runner(torch_runner(model, torch.device("cpu")), scale=scale, name="m",
                                   backend="torch", device=torch.device("cpu"))
    return ImageUpscaler(up, tile=0)


@pytest.mark.parametrize("fmt, arch, scale", [("onnx", "espcn-x2", 2), ("openvino", "vdsr", 3)])
def test_uint8_export_of_a_y_model_states_and_keeps_its_least_side(tmp_path, fmt, arch, scale):
    # BicubicUp mirrors two pixels at each border: a 1-pixel side fails in onnxruntime ("Invalid
    # input shape: {3,3}") and OpenVINO; the contract said nothing of it. 2 pixels: as `image`.
    torch.manual_seed(0)
    model = create_model(arch, **({"num_layers": 3} if arch == "vdsr" else {})).eval()
    out = tmp_path / f"m{export.SUFFIX_OF[fmt]}"
    export.export_model(model, fmt, out, uint8_io=True, scale=scale)
    if fmt == "onnx":
        contract = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["upsample"])
        sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        run = lambda x: sess.run(None, {"input": x})[0]  # noqa: E731
    else:
        import openvino as ov
        contract = json.loads(ov.Core().read_model(str(out)).get_rt_info(["upsample"]).astype(str))
        compiled = cache.ov_compiled(out)  # f32, as the contract says
        run = lambda x: compiled(x)[0]  # noqa: E731
    assert contract["min_side"] == 1 and "at least" not in contract["input"]  # any side since session 9
    ref_up = torch_image_upscaler(model, scale)
    rng = np.random.default_rng(0)
    for h, w in [(1, 1), (1, 5), (2, 2), (2, 5), (3, 2), (5, 6)]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        got = np.asarray(run(img[None])[0])
        assert got.shape == (scale * h, scale * w, 3)
        assert np.abs(got.astype(int) - ref_up.upscale(img).astype(int)).max() <= 1, (h, w)


def test_float_and_rgb_exports_take_any_side():
    y = export.io_contract(create_model("espcn-x2").upsample_spec, "e", None, uint8_io=False, fp16=False)
    rgb = export.io_contract(create_model("vapsr-x2").upsample_spec, "v", 2, uint8_io=True, fp16=False)
    assert y["min_side"] == rgb["min_side"] == 1 and "at least" not in y["input"] + rgb["input"]


def run_ir(xml, x):
    return file_session(xml, Backend.OPENVINO, torch.device("cpu"))(x)


def test_ir_weights_zeroed_at_their_length_are_made_again():
    # OpenVINO reads such a .bin without a complaint: the picture was 240 levels off
    model = espcn()
    xml = export.cached_ir(model)
    x = torch.rand(1, 1, 9, 11)
    want = run_ir(xml, x)
    zero_tail(xml.with_suffix(".bin"))
    assert not cache.readable_ir(xml)
    for blob in (cache.cache_dir() / "openvino").glob("*"):
        blob.unlink()  # a compiled blob would hide the damaged weights
    again = export.cached_ir(model)
    assert cache.readable_ir(again)
    assert torch.equal(run_ir(again, x), want)


def test_onnx_weights_zeroed_inside_the_file_are_exported_again():
    model = espcn()
    path = export.cached_onnx(model)
    good = path.read_bytes()
    weight = model.state_dict()["first_part.2.weight"]
    raw = weight.detach().contiguous().numpy().tobytes()
    at = good.find(raw[:64])
    assert at > 0  # the tensor's bytes as they lie in the file
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(b"\0" * 64)  # still a valid protobuf: onnxruntime would load it
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert export.cached_onnx(model).read_bytes() == good


def test_fp32_ends_variant_sharing_damaged_weights_is_made_again():
    model = espcn()
    main = export.cached_ir(model)
    body = auto._variant(main, tail=False)
    assert body != main and cache.readable_ir(body)
    x = torch.rand(1, 1, 8, 8)
    want = run_ir(body, x)
    zero_tail(body.with_suffix(".bin"))  # a hard link: the main graph's weights too
    for blob in (cache.cache_dir() / "openvino").glob("*"):
        blob.unlink()
    again = auto._variant(export.cached_ir(model), tail=False)
    assert cache.readable_ir(again)
    assert torch.equal(run_ir(again, x), want)


def test_an_unsealed_entry_is_taken_as_it_is(tmp_path):
    # an older cache or an `upsample quantize` output has no seal: not rebuilt for that
    f = tmp_path / "a.onnx"
    f.write_bytes(b"abc")
    assert cache.intact(f)
    cache.seal(f)
    assert cache.intact(f)
    f.write_bytes(b"abd")
    assert not cache.intact(f)
    os.remove(str(f) + ".sha256")
    assert cache.intact(f)
