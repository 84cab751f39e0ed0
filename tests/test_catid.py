"""catid's VapSR variant: his [-1, 1] convention at the model edge, his checkpoint layouts loaded by
path, and his (and others') ONNX exports run through `--model file.onnx`."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from upsample.cli import main
from upsample.data.colour import to_uint8
from upsample.models.checkpoint import load_checkpoint
from upsample.models.registry import create_model

NAME = "vapsr-catid-x2"


def variant():
    """The registered variant as `--model vapsr-catid-x2` builds it (untrained: seed 0)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return create_model(NAME).eval()


def his_network(state):
    """His network as he runs it: the same layers without our edge mapping, fed uint8 / 127.5 - 1,
    its [-1, 1] output turned to uint8 by `x * 127.5 + 128`, clamped and truncated."""
    core = create_model(NAME, signed_io=False).eval()
    core.load_state_dict(state)

    class Uint8Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.core = core

        def forward(self, x):
            y = self.core(x.float() / 127.5 - 1)
            return (y * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return Uint8Net().eval()


def write_images(folder, n=2, size=(24, 20)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(folder / f"im{i}.png")
    return folder


def eval_json(capsys, model, data, *extra):
    assert main(["eval", "--model", model, "--data", str(data), "--json", "-", *extra]) == 0
    return json.loads(capsys.readouterr().out)["datasets"][data.name]


def test_variant_is_his_architecture():
    m = variant()
    block = m.body[0]
    assert len(m.body) == 20 and m.conv_first.out_channels == 64 and block.proj_1.out_channels == 48
    assert block.proj_1.kernel_size == (3, 3) and block.proj_1.padding == (1, 1)
    assert block.atten_branch.depthwise.kernel_size == (5, 5)  # the attention is VapSR's
    assert m.upsampler[0].out_channels == 56 and m.upsampler[2].out_channels == 12


def test_edge_mapping_gives_his_pixels():
    m = variant()
    x = torch.randint(0, 256, (1, 3, 12, 10), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    with torch.no_grad():
        ours = to_uint8(m(x.float() / 255)).astype(int)
        his = his_network(m.state_dict())(x)[0].permute(1, 2, 0).numpy().astype(int)
    assert np.abs(ours - his).max() <= 1 and (ours == his).mean() > 0.99  # ties may round apart


@pytest.mark.parametrize("form", ["plain", "params_ema", "params", "module"])
def test_his_checkpoint_loads_by_path_and_evaluates_identically(tmp_path, capsys, form):
    state = variant().state_dict()
    obj = {"plain": state, "params_ema": {"params_ema": state}, "params": {"params": state},
           "module": {f"module.{k}": v for k, v in state.items()}}[form]
    torch.save(obj, tmp_path / "upsampling.pth")
    model, meta = load_checkpoint(tmp_path / "upsampling.pth")
    assert meta["source"] == "detected" and meta["name"] == NAME
    assert meta["kwargs"]["proj_kernel"] == 3 and meta["kwargs"]["signed_io"] is True
    data = write_images(tmp_path / "d")
    got = eval_json(capsys, str(tmp_path / "upsampling.pth"), data)
    want = eval_json(capsys, NAME, data)
    assert (got["psnr"], got["ssim"]) == (want["psnr"], want["ssim"])


def test_official_vapsr_is_still_told_apart(tmp_path):
    torch.save(create_model("vapsr-x2").state_dict(), tmp_path / "official.pth")
    _, meta = load_checkpoint(tmp_path / "official.pth")
    assert meta["name"] == "vapsr-x2" and "signed_io" not in meta["kwargs"]


def export(module, example, path, dynamic=True):
    axes = {"input": {0: "batch", 2: "height", 3: "width"}, "output": {0: "batch", 2: "oh", 3: "ow"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation note
        torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes=axes if dynamic else None)
    return path


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory):
    """The variant exported as his convert_to_onnx.py does (uint8 NCHW in and out) and in float
    [0, 1] I/O, both with dynamic batch, height and width."""
    d = tmp_path_factory.mktemp("onnx")
    m = variant()
    u8 = export(his_network(m.state_dict()), torch.zeros(1, 3, 16, 16, dtype=torch.uint8), d / "his_uint8.onnx")
    f32 = export(m, torch.rand(1, 3, 16, 16), d / "float.onnx")
    return {"uint8": u8, "float": f32}


@pytest.mark.parametrize("io,backend", [("uint8", "onnxruntime"), ("float", "onnxruntime"),
                                        ("uint8", "openvino")])
def test_onnx_exports_evaluate_as_the_variant(tmp_path, capsys, onnx_files, io, backend):
    data = write_images(tmp_path / "d")
    got = eval_json(capsys, str(onnx_files[io]), data, "--backend", backend)
    want = eval_json(capsys, NAME, data)
    # float arithmetic of another runtime: a pixel may round to the other side of a level
    assert abs(got["psnr"] - want["psnr"]) < 0.01 and abs(got["ssim"] - want["ssim"]) < 1e-3


def test_onnx_model_in_image_command(tmp_path, onnx_files):
    write_images(tmp_path / "d", n=1)
    src = tmp_path / "d" / "im0.png"
    assert main(["image", str(src), "-o", str(tmp_path / "a.png"), "--model", str(onnx_files["uint8"]),
                 "--backend", "onnxruntime"]) == 0
    assert main(["image", str(src), "-o", str(tmp_path / "b.png"), "--model", NAME]) == 0
    a, b = (np.asarray(Image.open(tmp_path / f"{k}.png")).astype(int) for k in "ab")
    assert a.shape == (48, 40, 3) and np.abs(a - b).max() <= 1


def test_our_uint8_nhwc_export_runs_as_a_foreign_graph(tmp_path, capsys):
    out = tmp_path / "espcn.onnx"
    assert main(["export", "espcn-x2", "--uint8-io", "-o", str(out)]) == 0
    data = write_images(tmp_path / "d")
    capsys.readouterr()
    got = eval_json(capsys, str(out), data, "--backend", "onnxruntime")
    want = eval_json(capsys, "espcn-x2", data)
    assert abs(got["psnr"] - want["psnr"]) < 0.05  # the graph's chroma resize is the runtime's


def test_graphs_that_are_not_image_to_image_get_one_line(tmp_path, capsys):
    data = write_images(tmp_path / "d", n=1)
    export(torch.nn.Linear(10, 5), torch.rand(2, 10), tmp_path / "linear.onnx", dynamic=False)

    class Halve(torch.nn.Module):
        def forward(self, x):
            return x[..., ::2, ::2]
    export(Halve(), torch.rand(1, 3, 16, 16), tmp_path / "halve.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a graph")
    for name, says in (("linear", "not an image tensor"), ("halve", "not an upscaling"),
                       ("junk", "not a readable ONNX")):
        rc = main(["eval", "--model", str(tmp_path / f"{name}.onnx"), "--data", str(data),
                   "--backend", "onnxruntime"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and says in err[0], (name, err)
    assert main(["eval", "--model", str(tmp_path / "halve.onnx"), "--data", str(data), "--backend", "torch"]) == 2
    assert "torch backend cannot run" in capsys.readouterr().err


def test_a_graph_of_one_fixed_size_runs_images_of_any_size(tmp_path, capsys):
    """A 1x3x16x16 graph: a 16x16 image runs (the memory planner's 32 and 96 px probe tiles made
    every run fail), and so does a 20x20 one, in windows of the graph's size (it was refused)."""
    class Shuffle(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.pixel_shuffle(x.repeat(1, 4, 1, 1), 2)
    graph = export(Shuffle(), torch.rand(1, 3, 16, 16), tmp_path / "fixed16.onnx", dynamic=False)
    for side in (16, 20):
        pixels = np.random.default_rng(side).integers(0, 256, (side, side, 3), np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"in{side}.png")
        assert main(["image", str(tmp_path / f"in{side}.png"), "-o", str(tmp_path / f"o{side}.png"),
                     "--model", str(graph), "--backend", "onnxruntime"]) == 0
        out = np.asarray(Image.open(tmp_path / f"o{side}.png"))
        assert out.shape == (2 * side, 2 * side, 3)
        x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float()  # pixels moved only: exact
        assert np.array_equal(out, Shuffle()(x)[0].permute(1, 2, 0).numpy().astype(np.uint8))
