"""Review of tiling and memory bounds: the tile side leaves room for what the memory probes keep
resident; a fixed-size `.onnx` graph that pixel-unshuffles gets windows on its multiple."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from upsample.inference import memory
from upsample.inference.load import load_upscaler
from upsample.inference.memory import MEMORY_SAFETY, MemoryPlanner
from upsample.inference.tiling import TileGeometry
from upsample.runtime.foreign_onnx import _axis_windows


def test_the_tile_side_leaves_room_for_what_the_probes_keep(monkeypatch):
    """A runtime keeps memory after its first run (a compiled graph, its buffers): the budget
    for tiles is what is left after the probes, not before them (a --max-memory 450MB vdsr run
    peaked at 502 MB)."""
    state = {"rss": 100_000_000, "runs": 0}
    monkeypatch.setattr(memory, "resident_bytes", lambda: state["rss"])
    monkeypatch.setattr(memory, "release_unheld", lambda: None)

    def run_tile(tiles, maxval):
        if state["runs"] == 0:
            state["rss"] += 200_000_000  # held from the first run on
        state["runs"] += 1
        n, h, w, _ = tiles.shape
        return torch.zeros(n, 3, 2 * h, 2 * w)

    pad = 4
    planner = MemoryPlanner(run_tile, torch.device("cpu"), TileGeometry.of(2.0), pad, max_memory=400_000_000)
    side = planner.tile_side(4000, 4000, 3, np.uint8)
    per_pixel = planner.bytes_per_pixel(3, np.uint8) * MEMORY_SAFETY
    left = 400_000_000 - state["rss"]
    assert 0 < side and (side + 2 * pad) ** 2 * per_pixel <= left
    assert side >= math.isqrt(int(left / per_pixel)) - 2 * pad - 1  # not needlessly small either


def test_an_image_no_larger_than_the_first_probe_runs_whole_without_probes():
    """A 1x1 or 32x32 icon waited for the two probe runs (18 s for rrdbnet on a busy CPU)."""
    runs = []
    planner = MemoryPlanner(lambda t, m: runs.append(t.shape) or torch.zeros(1), torch.device("cpu"),
                            TileGeometry.of(2.0), 4, max_memory=10_000_000_000)
    assert planner.tile_side(1, 1, 3, np.uint8) == 0 and planner.tile_side(32, 32, 3, np.uint8) == 0
    assert planner.tile_side(16, 16, 3, np.uint8, batch=4) == 0 and runs == []


class Unshuffle(nn.Module):
    """x2 through a pixel-unshuffle by 2, as Real-ESRGAN x2plus: inputs must start on even pixels."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(12, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 48, 3, padding=1)
        with torch.no_grad():
            self.conv2.bias.fill_(0.5)

    def forward(self, x):
        x = F.pixel_unshuffle(x, 2)
        return F.pixel_shuffle(self.conv2(F.leaky_relu(self.conv1(x), 0.2)), 4)


class Plain(Unshuffle):
    def forward(self, x):
        y = F.pixel_shuffle(self.conv2(F.leaky_relu(self.conv1(x.repeat(1, 4, 1, 1)), 0.2)), 4)
        return F.avg_pool2d(y, 2)


def _export(module, path, side=None):
    axes = {"input": {0: "b", 2: "h", 3: "w"}, "output": {0: "b", 2: "oh", 3: "ow"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.rand(1, 3, side or 16, side or 16),), str(path), dynamo=False,
                          opset_version=17, input_names=["input"], output_names=["output"],
                          dynamic_axes=None if side else axes)
    return str(path)


@pytest.fixture(scope="module")
def unshuffle_graphs(tmp_path_factory):
    d = tmp_path_factory.mktemp("unshuffle")
    return _export(Unshuffle(), d / "dynamic.onnx"), _export(Unshuffle(), d / "fixed32.onnx", side=32)


def test_a_fixed_size_unshuffling_graph_runs_odd_images_as_the_dynamic_one(unshuffle_graphs):
    """Windows of a fixed 32x32 graph placed at odd offsets paired other pixels in its
    pixel-unshuffle: a 45x38 image came out as another picture (up to 200 of 255 off)."""
    dynamic, fixed = (load_upscaler(p, backend="onnxruntime", device="cpu") for p in unshuffle_graphs)
    assert fixed.spec.pad_multiple == dynamic.spec.pad_multiple == 2
    x = torch.rand(1, 3, 45, 75, generator=torch.Generator().manual_seed(3))
    want, got = dynamic(x), fixed(x)
    assert got.shape == want.shape == (1, 3, 90, 150)
    assert (got - want).abs().max() < 1e-5


def test_a_fixed_size_graph_without_unshuffle_keeps_any_offset(tmp_path):
    up = load_upscaler(_export(Plain(), tmp_path / "plain32.onnx", side=32), backend="onnxruntime", device="cpu")
    assert up.spec.pad_multiple == 1 and up.scale == 2


@pytest.mark.parametrize("side,multiple", [(68, 4), (64, 2), (66, 2), (40, 8)])
def test_windows_start_on_the_graphs_multiple(side, multiple):
    for n in range(side, 4 * side, multiple):
        windows = _axis_windows(n, side, 32, multiple)
        assert all(s % multiple == 0 for s, _, _ in windows)
        assert windows[0][1] == 0 and windows[-1][2] == n
        assert all(a[2] == b[1] for a, b in zip(windows, windows[1:]))
