"""ONNX / OpenVINO export and the onnxruntime / openvino backends, against PyTorch."""

from __future__ import annotations

import json
from pathlib import Path
import re

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from upsample import cli
from upsample.models import registry
from upsample.runtime import export, sessions
from upsample.errors import UserError
from upsample.models.registry import create_model, get_spec, list_models
from upsample.inference.load import load_upscaler

# RRDBNet is exported with 2 RRDB blocks instead of 23: the graph has the same operators and
# layout (unshuffle, dense blocks, nearest upsampling), and the full 16.7M-parameter export costs
# seconds per variant on a shared CPU.
SMALL = {"rrdbnet": {"num_block": 2}}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UPSAMPLE_CACHE", str(tmp_path / "cache"))


def model_for(name):
    torch.manual_seed(0)
    return create_model(name, **SMALL.get(get_spec(name).arch, {})).eval()


def max_diff(a, b):
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


@pytest.mark.parametrize("name", list_models())
def test_onnxruntime_parity_dynamic_shapes(name):
    model = model_for(name)
    sess = sessions.ort_session(export.onnx_bytes(model, export.example_input(model, False)), torch.device("cpu"))
    # traced at 1x16x16; run at another batch and a non-square size
    x = torch.rand(2, model.upsample_spec.channels, 12, 20, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(x)
    got = sess.run(None, {"input": x.numpy()})[0]
    assert got.shape == tuple(want.shape)
    assert max_diff(got, want) <= 1e-4


@pytest.mark.parametrize("name", ["espcn-x3", "espcn-rgb-x2", "vdsr", "vapsr-x2", "vapsr-3x3-x4", "vapsr-s-x3"])
def test_openvino_backend_parity(name):
    model = model_for(name)
    run = sessions.session_runner(model, "openvino", torch.device("cpu")).run
    x = torch.rand(1, model.upsample_spec.channels, 10, 14, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert max_diff(run(x), model(x)) <= 1e-3


def test_backend_export_is_cached(tmp_path):
    model = model_for("espcn-x2")
    sessions.session_runner(model, "onnxruntime", torch.device("cpu")).run
    files = sorted((tmp_path / "cache").rglob("*.onnx"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    sessions.session_runner(model, "onnxruntime", torch.device("cpu")).run
    assert files[0].stat().st_mtime_ns == stamp
    with torch.no_grad():
        model.first_part[0].bias.add_(1)
    sessions.session_runner(model, "onnxruntime", torch.device("cpu")).run
    assert len(list((tmp_path / "cache").rglob("*.onnx"))) == 2  # new weights, new file


def parity_of(out: str) -> float:
    return float(re.search(r"max abs diff ([0-9.e+-]+)", out).group(1))


def test_export_command_onnx(tmp_path, capsys):
    out = tmp_path / "e.onnx"
    assert cli.main(["export", "espcn-x3", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "MB" in text and parity_of(text) <= 1e-4
    graph = onnx.load(str(out))
    onnx.checker.check_model(graph)
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param != "" for d in dims] == [True, False, True, True]
    assert not list(tmp_path.glob(".*part"))
    assert cli.main(["export", "espcn-x3", "-o", str(out)]) == 2  # no silent overwrite
    assert "exists" in capsys.readouterr().err


def test_export_uint8_io_and_fp16(tmp_path, capsys):
    out = tmp_path / "u.onnx"
    assert cli.main(["export", "espcn-x3", "--uint8-io", "-o", str(out)]) == 0
    assert parity_of(capsys.readouterr().out) <= 1  # one level: rounding of nearly equal floats
    sess = sessions.ort_session(str(out), torch.device("cpu"))
    assert sess.get_inputs()[0].type == "tensor(uint8)"
    assert sess.get_inputs()[0].shape == ["batch", "height", "width", 3]
    img = np.random.default_rng(0).integers(0, 256, (2, 10, 12, 3), dtype=np.uint8)
    res = sess.run(None, {"input": img})[0]
    assert res.dtype == np.uint8 and res.shape == (2, 30, 36, 3)
    # a picture one pixel high: the graph's colour resize mirrors as MATLAB does (it failed before)
    Image.fromarray(img[0, :1]).save(tmp_path / "line.png")
    Image.fromarray(img[0]).save(tmp_path / "fine.png")
    rc = cli.main(["image", str(tmp_path / "line.png"), str(tmp_path / "fine.png"), "-o", str(tmp_path / "o"),
                   "--model", str(out), "--backend", "onnxruntime"])
    err = capsys.readouterr().err
    assert rc == 0 and "Traceback" not in err, err
    assert (tmp_path / "o" / "fine_x3.png").exists() and (tmp_path / "o" / "line_x3.png").exists()

    assert cli.main(["export", "vapsr-x2", "--fp16", "--allow-untrained", "-o", str(tmp_path / "h.onnx")]) == 0
    assert parity_of(capsys.readouterr().out) <= 1e-2
    graph = onnx.load(str(tmp_path / "h.onnx"))
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


def test_export_command_openvino(tmp_path, capsys):
    out = tmp_path / "v.xml"
    assert cli.main(["export", "vapsr-s-x4", "--format", "openvino", "--allow-untrained", "-o", str(out)]) == 0
    assert parity_of(capsys.readouterr().out) <= 1e-3
    assert out.exists() and out.with_suffix(".bin").stat().st_size > 154_956 * 3  # fp32, not fp16


def test_export_refusals(tmp_path):
    with pytest.raises(UserError, match="discriminator"):
        cli_run(["export", "esrgan-discriminator", "-o", str(tmp_path / "d.onnx")])
    with pytest.raises(UserError, match="give one with --scale"):
        cli_run(["export", "vdsr", "--uint8-io", "-o", str(tmp_path / "v.onnx")])
    with pytest.raises(UserError, match=r"\.xml"):
        cli_run(["export", "espcn-x2", "--format", "openvino", "-o", str(tmp_path / "v.onnx")])
    (tmp_path / "j.bin").mkdir()  # the IR's weights file would go there: said before any work
    with pytest.raises(UserError, match=r"j\.bin is a folder"):
        cli_run(["export", "espcn-x2", "--format", "openvino", "-o", str(tmp_path / "j.xml"), "--overwrite"])


def cli_run(argv):
    args = cli.build_parser(cli.COMMANDS[argv[0]]).parse_args(argv)
    return args.func(args)


def test_eval_end_to_end_onnxruntime(tmp_path, capsys):
    data = tmp_path / "tiny"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(data / f"{i}.png")
    results = {}
    for backend in ("onnxruntime", "torch"):
        assert cli.main(["eval", "--model", "vapsr-x2", "--backend", backend, "--scale", "2",
                         "--data", str(data), "--json", "-"]) == 0
        results[backend] = json.loads(capsys.readouterr().out)["datasets"]["tiny"]
    assert results["onnxruntime"]["n"] == 2
    assert abs(results["onnxruntime"]["psnr"] - results["torch"]["psnr"]) < 0.01


def test_upscaler_backends_agree_on_y_model():
    x = torch.rand(1, 3, 9, 11, generator=torch.Generator().manual_seed(0))
    outs = [load_upscaler("espcn-x2", scale=2, backend=b)(x) for b in ("torch", "onnxruntime", "openvino")]
    assert outs[0].shape == (1, 3, 18, 22)
    assert max_diff(outs[1], outs[0]) <= 1e-4 and max_diff(outs[2], outs[0]) <= 1e-3


@pytest.mark.parametrize("name", ["espcn-x3", "vdsr"])
def test_uint8_export_matches_upsample_image(tmp_path, name):
    """The --uint8-io file computes what `upsample image` writes (same colour path): within one
    level (the rounding of floats a few ulp apart), where the old graph's chroma differed by 15."""
    rng = np.random.default_rng(1)
    smooth = np.kron(rng.integers(0, 256, (6, 5, 3)), np.ones((4, 4, 1)))  # strong chroma edges
    pic = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
    Image.fromarray(pic).save(tmp_path / "in.png")
    scale = ["--scale", "3"] if name == "vdsr" else []
    assert cli.main(["export", name, "--uint8-io", *scale, "-o", str(tmp_path / "m.onnx")]) == 0
    assert cli.main(["image", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"), "--model", name,
                     *scale, "--backend", "torch"]) == 0
    want = np.asarray(Image.open(tmp_path / "out.png"))
    got = sessions.ort_session(str(tmp_path / "m.onnx"), torch.device("cpu")).run(None, {"input": pic[None]})[0][0]
    assert got.shape == want.shape
    assert max_diff(got, want) <= 1


def test_export_writes_its_io_contract(tmp_path):
    assert cli.main(["export", "espcn-x2", "-o", str(tmp_path / "y.onnx")]) == 0
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "y.onnx")).metadata_props}
    contract = json.loads(props[export.CONTRACT_KEY])
    assert contract["input_name"] == "input" and contract["scale"] == 2
    assert "BT.601" in contract["colour"] and "Y, not clamped" in contract["output"]
    sess = sessions.ort_session(str(tmp_path / "y.onnx"), torch.device("cpu"))
    wild = np.random.default_rng(0).normal(0.5, 3, (1, 1, 8, 8)).astype(np.float32)  # far outside [0, 1]
    res = sess.run(None, {"input": wild})[0]
    assert res.min() < 0 and res.max() > 1  # a Y model's Y: `image` clamps after the RGB conversion
    rgb = export.FloatGraph(registry.create_model("vapsr-s-x2")).eval()  # an RGB model's output
    with torch.no_grad():
        out = rgb(torch.from_numpy(np.random.default_rng(1).normal(0.5, 3, (1, 3, 8, 8)).astype(np.float32)))
    assert out.min() >= 0 and out.max() <= 1  # is clamped in the graph

    import openvino as ov
    assert cli.main(["export", "vdsr", "--scale", "3", "--uint8-io", "--format", "openvino",
                     "-o", str(tmp_path / "v.xml")]) == 0
    ir = ov.Core().read_model(str(tmp_path / "v.xml"))
    contract = json.loads(ir.get_rt_info([export.CONTRACT_KEY]).astype(str))
    assert contract["model"] == "vdsr" and contract["scale"] == 3 and "uint8 NHWC" in contract["input"]


def test_our_pre_upsampled_vdsr_export_runs_back_at_the_scale_asked(tmp_path):
    """A float export of VDSR takes HR-sized input: read back through --model file.onnx it must
    not be probed as a x1 graph (its contract says so), and it matches the torch model."""
    import upsample
    out = tmp_path / "vdsr.onnx"
    assert cli.main(["export", "vdsr", "--format", "onnx", "-o", str(out)]) == 0
    img = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    got = np.asarray(upsample.load(str(out), scale=3, backend="onnxruntime").upscale(img))
    want = np.asarray(upsample.load("vdsr", scale=3, backend="torch").upscale(img))
    diff = np.abs(got.astype(int) - want)
    assert got.shape == (60, 72, 3) and (diff > 1).mean() < 1e-3 and diff.mean() < 0.01


@pytest.mark.parametrize("uint8_io", [False, True])
def test_an_rrdbnet_x2_export_runs_back_on_odd_sizes(tmp_path, uint8_io):
    """Its pixel-unshuffle needs even sides: the contract says so (`input_multiple`) and, read
    back through --model file.onnx, the image is padded as for the checkpoint (it failed in the
    graph's Reshape); VDSR's float export says its output is its input's size."""
    from upsample.models.checkpoint import save_checkpoint
    save_checkpoint(model_for("rrdbnet-x2"), tmp_path / "r.safetensors")
    out = tmp_path / "r.onnx"
    assert cli.main(["export", str(tmp_path / "r.safetensors"), "-o", str(out)]
                    + (["--uint8-io"] if uint8_io else [])) == 0
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    contract = json.loads(props[export.CONTRACT_KEY])
    assert contract["input_multiple"] == 2 and "multiples of 2" in contract["input"]
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (13, 11, 3), np.uint8)).save(tmp_path / "odd.png")
    for model, name in ((out, "graph"), (tmp_path / "r.safetensors", "ckpt")):
        assert cli.main(["image", str(tmp_path / "odd.png"), "-o", str(tmp_path / f"{name}.png"), "--model",
                         str(model), "--backend", "onnxruntime" if name == "graph" else "torch"]) == 0
    got, want = (np.asarray(Image.open(tmp_path / f"{n}.png")) for n in ("graph", "ckpt"))
    assert got.shape == (26, 22, 3) and max_diff(got, want) <= 1
    assert export.io_contract(get_spec("vdsr"), "vdsr", 3, uint8_io=False, fp16=False)["output"].startswith(
        "float32 NCHW (N, 1, H, W): the input's size")


def test_an_exported_openvino_graph_given_as_model_is_one_line(tmp_path, capsys):
    """It carries the export's I/O contract, not an int8 model's architecture (a KeyError
    traceback before); the line names the ONNX export that --model runs."""
    out = tmp_path / "e.xml"
    assert cli.main(["export", "espcn-x2", "--format", "openvino", "-o", str(out)]) == 0
    assert "INFERENCE_PRECISION_HINT" in capsys.readouterr().err
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    rc = cli.main(["image", str(img), "-o", str(tmp_path / "o.png"), "--model", str(out), "--backend", "openvino"])
    err = capsys.readouterr().err
    assert rc == 2 and "`upsample export espcn-x2 --format onnx`" in err and "Traceback" not in err


def test_uint8_export_of_a_y_model_declares_three_output_channels(tmp_path):
    out = tmp_path / "e.onnx"
    assert cli.main(["export", "espcn-x2", "--uint8-io", "-o", str(out)]) == 0
    dims = onnx.load(str(out)).graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", "out_height", "out_width", 3]


def test_a_float_y_export_run_by_image_matches_the_registry_model_on_bright_edges(tmp_path):
    """The repo's sample picture has bright edges where espcn-x3's Y overshoots 1: a graph that
    clamped its Y put pixels 50 levels from `upsample image`'s (which clamps after the RGB
    conversion); the float graph now leaves the Y as it comes."""
    sample = str(Path(__file__).resolve().parents[1] / "assets" / "sample.png")
    assert cli.main(["export", "espcn-x3", "-o", str(tmp_path / "e3.onnx")]) == 0
    for name, model in (("torch.png", ["espcn-x3", "--backend", "torch"]),
                        ("onnx.png", [str(tmp_path / "e3.onnx"), "--backend", "onnxruntime"])):
        assert cli.main(["image", sample, "-o", str(tmp_path / name), "--model", *model]) == 0
    want, got = (np.asarray(Image.open(tmp_path / n)).astype(int) for n in ("torch.png", "onnx.png"))
    assert np.abs(want - got).max() <= 1
