"""Review of `upsample export` as a third party uses its files (s9): plain onnxruntime / OpenVINO
sessions fed any H x W (an RRDBNet x1/x2 graph failed in its Reshape on odd sides, a uint8 Y
graph on 1-pixel sides), export of a graph file, an IR whose .bin would be the input checkpoint,
and the IR pair written whole or not at all."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch.nn import functional as F

from upsample import cli
from upsample.inference.api import ImageUpscaler
from upsample.inference.upscaler import ModelUpscaler
from upsample.models.registry import create_model
from upsample.runtime import cache, export
from upsample.runtime.pytorch import torch_runner


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UPSAMPLE_CACHE", str(tmp_path / "cache"))


def tiny(name, **kw):
    torch.manual_seed(0)
    small = {"num_block": 1, "num_feat": 8, "num_grow_ch": 4} if name.startswith("rrdbnet") else {}
    return create_model(name, **small, **kw).eval()


def plain_session(path):
    """The file as a third party opens it: (run numpy -> numpy, its contract)."""
    if path.suffix == ".onnx":
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        return (lambda x: sess.run(None, {"input": x})[0]), json.loads(props[export.CONTRACT_KEY])
    import openvino as ov
    contract = json.loads(ov.Core().read_model(str(path)).get_rt_info([export.CONTRACT_KEY]).astype(str))
    compiled = cache.ov_compiled(path)  # f32, as the contract says
    return (lambda x: np.asarray(compiled(x)[0])), contract


def torch_image_upscaler(model, scale):
    up = ModelUpscaler.from_runner(torch_runner(model, torch.device("cpu")), scale=scale, name="m",
                                   backend="torch", device=torch.device("cpu"))
    return ImageUpscaler(up, tile=0)


def padded_reference(model, x):
    """The network as `Upscaler.run_network` runs it: padded to its multiple, cropped, clamped."""
    m, s = model.upsample_spec.pad_multiple, model.upsample_spec.scale
    h, w = x.shape[-2:]
    ph, pw = -h % m, -w % m
    xp = F.pad(x, (0, pw, 0, ph), mode="reflect" if ph < h and pw < w else "replicate")
    with torch.no_grad():
        return model(xp)[..., :h * s, :w * s].clamp(0, 1).numpy()


@pytest.mark.parametrize("name, fmt", [("rrdbnet-x2", "onnx"), ("rrdbnet-x2", "openvino"), ("rrdbnet-x1", "onnx")])
def test_an_unshuffling_float_export_takes_any_side(tmp_path, name, fmt):
    # it failed in the graph's Reshape on 17x9 ("cannot be reshaped"): the graph pads itself now
    model = tiny(name)
    out = tmp_path / f"m{export.SUFFIX_OF[fmt]}"
    export.export_model(model, fmt, out)
    run, contract = plain_session(out)
    m = model.upsample_spec.pad_multiple
    assert contract["pads_to_multiple"] and contract["input_multiple"] == m and contract["min_side"] == 1
    assert f"any H and W: the graph pads them to multiples of {m}" in contract["input"]
    for n, h, w in [(1, 1, 1), (3, 17, 9), (1, 1, 6), (1, 2, 7), (2, 6, 5)]:
        x = torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(h * w))
        got = run(x.numpy())
        assert got.shape == (n, 3, h * model.upsample_spec.scale, w * model.upsample_spec.scale)
        assert np.abs(got - padded_reference(model, x)).max() < 1e-4, (h, w)


def test_an_unshuffling_uint8_export_matches_upsample_image_on_odd_sides(tmp_path):
    model = tiny("rrdbnet-x2")
    out = tmp_path / "m.onnx"
    export.export_model(model, "onnx", out, uint8_io=True, scale=2)
    run, _ = plain_session(out)
    ref = torch_image_upscaler(model, 2)
    rng = np.random.default_rng(0)
    for h, w in [(1, 1), (17, 9), (4, 3)]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        got = run(np.stack([img, img]))
        assert got.shape == (2, 2 * h, 2 * w, 3)
        assert np.abs(got.astype(int) - ref.upscale(img).astype(int)).max() <= 1, (h, w)


@pytest.mark.parametrize("fmt, arch, scale", [("onnx", "espcn-x2", 2), ("openvino", "vdsr", 3),
                                              ("onnx", "espcn-x4", 4)])
def test_a_uint8_y_export_takes_one_pixel_sides(tmp_path, fmt, arch, scale):
    # its in-graph bicubic sliced two mirror pixels that a 1-pixel side lacks ("Invalid input
    # shape: {3,3}"); `upsample image` runs such images, MATLAB's mirror folds over one pixel
    model = tiny(arch, **({"num_layers": 3} if arch == "vdsr" else {}))
    out = tmp_path / f"m{export.SUFFIX_OF[fmt]}"
    export.export_model(model, fmt, out, uint8_io=True, scale=scale)
    run, contract = plain_session(out)
    assert contract["min_side"] == 1 and "at least" not in contract["input"]
    ref = torch_image_upscaler(model, scale)
    rng = np.random.default_rng(1)
    for h, w in [(1, 1), (1, 5), (4, 1), (2, 3), (7, 6)]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        got = run(img[None])[0]
        assert got.shape == (scale * h, scale * w, 3)
        assert np.abs(got.astype(int) - ref.upscale(img).astype(int)).max() <= 1, (h, w)


def test_the_any_side_bicubic_is_the_sliced_one_where_that_runs():
    x = torch.rand(2, 1, 5, 7, generator=torch.Generator().manual_seed(0))
    for s in (2, 3, 4):
        assert torch.allclose(export.AnySideBicubicUp(s)(x), export.BicubicUp(s)(x), atol=1e-6)


@pytest.mark.parametrize("suffix", [".onnx", ".xml"])
def test_exporting_an_exported_graph_is_one_line(tmp_path, capsys, suffix):
    # it said "not a checkpoint (neither safetensors nor a PyTorch file)" of an .onnx
    graph = tmp_path / f"g{suffix}"
    graph.write_bytes(b"<net/>" if suffix == ".xml" else onnx.helper.make_model(onnx.helper.make_graph(
        [], "g", [], [])).SerializeToString())
    rc = cli.main(["export", str(graph), "-o", str(tmp_path / "o.onnx")])
    err = capsys.readouterr().err
    assert rc == 2 and "is already an exported graph, not a checkpoint" in err and "Traceback" not in err
    assert not (tmp_path / "o.onnx").exists()


def test_an_ir_never_replaces_the_checkpoint_it_exports(tmp_path, capsys):
    # `export net.bin --format openvino -o net.xml --overwrite` replaced the PyTorch checkpoint
    # net.bin by the IR's weights (and without --overwrite the line invited to do so)
    ckpt = tmp_path / "net.bin"
    torch.save(tiny("espcn-x2").state_dict(), ckpt)
    before = ckpt.read_bytes()
    for extra in ([], ["--overwrite"]):
        rc = cli.main(["export", str(ckpt), "--format", "openvino", "-o", str(tmp_path / "net.xml"), *extra])
        err = capsys.readouterr().err
        assert rc == 2 and "the checkpoint being exported" in err and "net-ir.xml" in err, err
    assert ckpt.read_bytes() == before and not (tmp_path / "net.xml").exists()


def test_a_failed_ir_write_leaves_the_old_pair_and_no_temporary(tmp_path, monkeypatch):
    import openvino as ov
    model = tiny("espcn-x2")
    out = tmp_path / "m.xml"
    export.export_model(model, "openvino", out)
    old = out.read_bytes(), out.with_suffix(".bin").read_bytes()

    def broken_save(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(ov, "save_model", broken_save)
    with pytest.raises(OSError):
        export.export_model(tiny("espcn-x3"), "openvino", out)
    assert (out.read_bytes(), out.with_suffix(".bin").read_bytes()) == old
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == ["m.bin", "m.xml"]
    monkeypatch.undo()
    monkeypatch.setenv("UPSAMPLE_CACHE", str(tmp_path / "cache"))
    export.export_model(tiny("espcn-x3"), "openvino", out)  # replaced whole: the x3 graph
    run, contract = plain_session(out)
    assert contract["scale"] == 3 and run(np.zeros((1, 1, 4, 5), np.float32)).shape == (1, 1, 12, 15)
