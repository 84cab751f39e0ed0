"""Other projects' `.onnx` graphs in the forms their export scripts leave them: one fixed input
size (Real-ESRGAN's pytorch2onnx.py), a pixel-unshuffled input that takes only even sides
(Real-ESRGAN x2plus), an output with no shape annotation. Tiny 2-conv graphs, built here."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from upsample.cli import main
from upsample.inference.load import load_upscaler
from upsample.inference.tiling import grow_to
from upsample.runtime.foreign_onnx import _axis_windows


class Net(nn.Module):
    """Two 3x3 convs and a pixel shuffle: x2, a receptive radius of 2 input pixels (of 2 input
    pixel pairs after a pixel-unshuffle by 2, as RRDBNet x2's)."""

    def __init__(self, unshuffle: int = 1):
        super().__init__()
        torch.manual_seed(0)
        self.unshuffle = unshuffle
        self.conv1 = nn.Conv2d(3 * unshuffle ** 2, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 3 * (2 * unshuffle) ** 2, 3, padding=1)
        with torch.no_grad():
            self.conv2.bias.fill_(0.5)  # mid-grey and detail: an output that is not all clamped

    def forward(self, x):
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)
        return F.pixel_shuffle(self.conv2(F.leaky_relu(self.conv1(x), 0.2)), 2 * self.unshuffle)


def export(module, path, side=16, dynamic=True):
    axes = {"input": {0: "batch", 2: "height", 3: "width"}, "output": {0: "batch", 2: "oh", 3: "ow"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation note
        torch.onnx.export(module.eval(), (torch.rand(1, 3, side, side),), str(path), dynamo=False,
                          opset_version=17, input_names=["input"], output_names=["output"],
                          dynamic_axes=axes if dynamic else None)
    return path


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    d = tmp_path_factory.mktemp("foreign")
    net = Net()
    return {"dynamic": export(net, d / "dynamic.onnx"),
            "fixed16": export(net, d / "fixed16.onnx", dynamic=False),
            "unshuffle": export(Net(unshuffle=2), d / "unshuffle.onnx")}


def run(path, x):
    up = load_upscaler(str(path), backend="onnxruntime", device="cpu")
    return up(x)


def png(path, h, w, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)).save(path)
    return path


@pytest.mark.parametrize("side", [16, 17, 31, 40, 64, 100])
@pytest.mark.parametrize("context", [0, 4, 32])
def test_windows_cover_each_pixel_once_with_context(side, context):
    for n in range(side, 3 * side + 5):
        windows = _axis_windows(n, side, context)
        keep = min(context, side // 4)
        assert [k0 for _, k0, _ in windows] == [0, *(k1 for _, _, k1 in windows[:-1])]
        assert windows[-1][2] == n
        for s, k0, k1 in windows:
            assert 0 <= s and s + side <= n and k0 < k1  # exactly the graph's size, in the image
            assert k0 - s >= (keep if k0 > 0 else 0) and s + side - k1 >= (keep if k1 < n else 0)


@pytest.mark.parametrize("h,w", [(16, 16), (40, 52), (37, 23), (16, 50)])
def test_a_fixed_size_graph_runs_any_size_seamlessly(graphs, h, w):
    """A 1x3x16x16 graph runs images larger than 16 in windows of 16 whose overlap covers the
    receptive field: the same as the network exported with dynamic height and width."""
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(h * w))
    want = run(graphs["dynamic"], x)
    got = run(graphs["fixed16"], x)
    assert got.shape == want.shape == (1, 3, 2 * h, 2 * w)
    assert (got - want).abs().max() < 1e-5


def test_a_fixed_size_graph_pads_a_smaller_image_up(graphs):
    x = torch.rand(2, 3, 9, 12, generator=torch.Generator().manual_seed(1))
    want, got = run(graphs["dynamic"], x), run(graphs["fixed16"], x)
    assert got.shape == want.shape == (2, 3, 18, 24)
    # the padding is mirrored, where the dynamic graph's convs see zeros: only the last rows and
    # columns (the receptive radius) may differ
    assert (got - want)[..., :-4, :-4].abs().max() < 1e-5


def test_a_fixed_size_graph_in_the_image_command(graphs, tmp_path, capfd):
    """Tiles of the memory planner or of --tile, each run in the graph's windows: no seam."""
    src = png(tmp_path / "in.png", 45, 38)
    for name, extra in (("dynamic", []), ("fixed16", []), ("fixed16", ["--tile", "20", "--tile-pad", "4"])):
        out = tmp_path / f"{name}{len(extra)}.png"
        assert main(["image", str(src), "-o", str(out), "--model", str(graphs[name]),
                     "--backend", "onnxruntime", *extra]) == 0, capfd.readouterr().err
    want = np.asarray(Image.open(tmp_path / "dynamic0.png")).astype(int)
    for got in ("fixed160.png", "fixed164.png"):
        got = np.asarray(Image.open(tmp_path / got)).astype(int)
        assert got.shape == want.shape == (90, 76, 3) and np.abs(got - want).max() <= 1


def test_an_unshuffling_graph_gets_even_sides_and_no_native_log(graphs, tmp_path, capfd):
    """A graph that pixel-unshuffles by 2 fails on odd sides: the probe finds that it needs even
    ones, so a 33x33 image is padded to 34 and cropped back, with nothing of onnxruntime's on
    stderr (the failing probe's ERROR log)."""
    up = load_upscaler(str(graphs["unshuffle"]), backend="onnxruntime", device="cpu")
    assert up.spec.input_multiple == 2 and up.scale == 2
    capfd.readouterr()
    src = png(tmp_path / "in33.png", 33, 33)
    assert main(["image", str(src), "-o", str(tmp_path / "o.png"), "--model", str(graphs["unshuffle"]),
                 "--backend", "onnxruntime"]) == 0
    err = capfd.readouterr().err
    assert "onnxruntime" not in err and "\x1b[" not in err, err
    got = np.asarray(Image.open(tmp_path / "o.png")).astype(np.float32) / 255
    x = torch.from_numpy(np.array(Image.open(src))).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        want = Net(unshuffle=2)(F.pad(x, (0, 1, 0, 1), mode="reflect"))[0, :, :66, :66].clamp(0, 1)
    assert np.abs(got - want.permute(1, 2, 0).numpy()).max() <= 1 / 255 + 1e-6


def test_an_output_without_shape_takes_the_layout_of_the_probe(graphs, tmp_path, capsys):
    m = onnx.load(str(graphs["dynamic"]))
    m.graph.output[0].type.tensor_type.ClearField("shape")
    onnx.save(m, str(tmp_path / "no_shape.onnx"))
    x = torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(2))
    got, want = run(tmp_path / "no_shape.onnx", x), run(graphs["dynamic"], x)
    assert got.shape == want.shape and (got - want).abs().max() < 1e-6

    class Flat(nn.Module):  # an image-shaped input, an output of rank 3: refused in one line
        def forward(self, x):
            return x[0].repeat(1, 2, 2)
    path = export(Flat(), tmp_path / "flat.onnx")
    m = onnx.load(str(path))
    m.graph.output[0].type.tensor_type.ClearField("shape")
    onnx.save(m, str(path))
    png(tmp_path / "in.png", 16, 16)
    capsys.readouterr()
    assert main(["image", str(tmp_path / "in.png"), "-o", str(tmp_path / "o.png"), "--model", str(path),
                 "--backend", "onnxruntime"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "not an image" in err[0], err


def test_tiles_of_a_fixed_size_graph_grow_inward_to_its_size():
    """An edge tile smaller than the graph's size takes real pixels of its neighbour, not a mirror."""
    assert grow_to((36, 45, 0, 24), (16, 16), 45, 38) == (29, 45, 0, 24)
    assert grow_to((0, 9, 30, 38), (16, None), 9, 38) == (0, 9, 30, 38)  # the whole side is 9
    assert grow_to((36, 45, 0, 24), (16, 16), 45, 38, align=2) == (28, 45, 0, 24)
    assert grow_to((36, 45, 0, 24), None, 45, 38) == (36, 45, 0, 24)


class _Resize(nn.Module):
    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return F.interpolate(x, scale_factor=self.factor, mode="nearest")


@pytest.mark.parametrize("factor", [1.5, (2.0, 1.0)])
def test_a_fixed_size_graph_that_is_no_integer_upscaling_is_refused(tmp_path, capsys, factor):
    """Its probe runs through the windows, whose crop to the image's size hid a 1.5x graph
    (taken as x1, its output's corner kept) and misnamed a width-only one."""
    path = export(_Resize(factor), tmp_path / "odd.onnx", dynamic=False)
    png(tmp_path / "in.png", 16, 16)
    assert main(["image", str(tmp_path / "in.png"), "-o", str(tmp_path / "o.png"), "--model", str(path),
                 "--backend", "onnxruntime"]) != 0
    err = capsys.readouterr().err
    assert "not an upscaling by one integer factor" in err and len(err.strip().splitlines()) == 1
