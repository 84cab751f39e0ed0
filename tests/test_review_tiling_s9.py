"""Review of tiling as a hostile user: tiled output equals the whole-image output at awkward tile
sizes and odd image sizes, and a large image written in bands shows one progress bar (in input
pixels, moved by every tile) instead of a tile bar per band nested in a bar of bands."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from upsample.inference import tiler as tiler_module
from upsample.inference.load import load_upscaler
from upsample.inference.tiler import Tiler
from upsample.inference.upscaler import BicubicUpscaler


def picture(h: int, w: int, c: int = 3, dtype=np.uint8) -> np.ndarray:
    """A smooth picture with some texture: rounding ties are as rare as in a photo."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    planes = [np.sin(xx / 3.1 + k) * np.cos(yy / 2.3 - k) * 0.4 + 0.5 for k in range(c)]
    top = np.iinfo(dtype).max
    return np.round(np.stack(planes, 2) * top * 0.9 + top * 0.05).astype(dtype)


class CountingBar:
    """Stands in for `progress_bar`: records what each bar is told."""
    made: list = []

    def __init__(self, total, enabled, **kw):
        self.total, self.enabled, self.desc, self.n, self.closed = total, enabled, kw.get("desc"), 0.0, False
        CountingBar.made.append(self)

    def update(self, k):
        self.n += k

    def close(self):
        self.closed = True


def test_bands_show_one_bar_in_pixels_moved_by_every_tile(monkeypatch):
    """`upsample image` on a large PNG (bands of rows) wrote a 'tiles' bar per band nested in a
    bar of rows: in a log that was cursor-up escapes and each rows line twice, and a band of a
    slow model (minutes) moved the rows bar only when done."""
    CountingBar.made = []
    monkeypatch.setattr(tiler_module, "progress_bar", CountingBar)
    arr = picture(40, 30)
    t = Tiler(BicubicUpscaler(2.0), tile=8, progress=True)
    rows = []
    t.upscale_rows(arr, rows.append, tile=8, band=10, desc="big.png")
    assert len(CountingBar.made) == 1, [b.desc for b in CountingBar.made]
    bar = CountingBar.made[0]
    assert bar.enabled and bar.closed and bar.total == 40 * 30
    assert bar.n == pytest.approx(40 * 30)
    whole = Tiler(BicubicUpscaler(2.0), tile=0).upscale(arr)
    assert np.array_equal(np.concatenate(rows), whole)  # the bands are the whole picture


def test_a_tile_progress_bar_of_its_own_when_no_caller_counts(monkeypatch):
    CountingBar.made = []
    monkeypatch.setattr(tiler_module, "progress_bar", CountingBar)
    Tiler(BicubicUpscaler(2.0), tile=8, progress=True).upscale(picture(20, 20))
    assert len(CountingBar.made) == 1 and CountingBar.made[0].n == 400 and CountingBar.made[0].closed


@pytest.fixture(scope="module")
def espcn_x3():
    return load_upscaler("espcn-x3", backend="torch")


@pytest.mark.parametrize("shape", [(17, 9), (1, 23), (23, 1), (32, 32), (31, 37)])
@pytest.mark.parametrize("tile", [1, 7, 16, 33, 500])
def test_espcn_tiles_equal_the_whole_picture(espcn_x3, shape, tile):
    """The receptive field is within the pad: any tile, at any image size, gives the whole
    picture's values (32x32 with 16px tiles: a picture exactly on the tile grid). Not always
    its bytes: fp32 convolutions of another input size sum in another order (7e-7 apart here),
    which flips a rounding tie now and then (1 value of 27648 at 32x32, 16px tiles)."""
    if tile == 1 and min(shape) > 1 and shape != (17, 9):
        pytest.skip("1px tiles of a larger picture: slow, and the 17x9 case has the same geometry")
    arr = picture(*shape)
    whole = Tiler(espcn_x3, tile=0).upscale(arr)
    tiled = Tiler(espcn_x3, tile=tile).upscale(arr)
    assert tiled.shape == (shape[0] * 3, shape[1] * 3, 3)
    diff = np.abs(tiled.astype(int) - whole.astype(int))
    assert diff.max() <= 1 and np.count_nonzero(diff) <= max(1, diff.size // 1000)


@pytest.mark.parametrize("tile_batch", [1, 2, None])
@pytest.mark.parametrize("channels,dtype", [(1, np.uint8), (3, np.uint16)])
def test_bicubic_tiles_equal_the_whole_picture_gray_and_16_bit(tile_batch, channels, dtype):
    arr = picture(19, 13, channels, dtype)
    up = BicubicUpscaler(3.0)
    whole = Tiler(up, tile=0).upscale(arr)
    diff = np.abs(Tiler(up, tile=7, tile_batch=tile_batch).upscale(arr).astype(int) - whole.astype(int))
    # 8 bits: the same bytes; 16 bits: a float32 sum of another order flips a tie by 1 of 65535
    assert diff.max() <= (0 if dtype == np.uint8 else 1) and np.count_nonzero(diff) <= diff.size // 1000


class ShuffleNet(nn.Module):
    """Another project's tiny x2 network: two convolutions and a pixel shuffle."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 12, 3, padding=1)

    def forward(self, x):
        return F.pixel_shuffle(self.c2(torch.relu(self.c1(x))), 2) + F.interpolate(x, scale_factor=2.0)


def test_a_foreign_onnx_graph_tiles_equal_the_whole_picture(tmp_path):
    pytest.importorskip("onnxruntime")
    path = tmp_path / "tiny.onnx"
    axes = {"input": {0: "b", 2: "h", 3: "w"}, "output": {0: "b", 2: "oh", 3: "ow"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ShuffleNet().eval(), torch.rand(1, 3, 32, 32), str(path), input_names=["input"],
                          output_names=["output"], dynamic_axes=axes, opset_version=17, dynamo=False)
    up = load_upscaler(str(path), backend="onnxruntime")
    arr = picture(21, 11)
    whole = Tiler(up, tile=0).upscale(arr)
    for tile in (1, 7, 33):
        assert np.array_equal(Tiler(up, tile=tile, tile_batch=2).upscale(arr), whole), tile


def _planner(monkeypatch, *, rss: int, max_memory, free: int = 64 * 10 ** 9):
    from upsample.inference import memory
    from upsample.inference.memory import MemoryPlanner
    from upsample.inference.tiling import TileGeometry
    monkeypatch.setattr(memory, "resident_bytes", lambda: rss)
    monkeypatch.setattr(memory, "release_unheld", lambda: None)
    monkeypatch.setattr(memory, "free_memory", lambda device: free)

    def run_tile(tiles, maxval):  # 400 bytes per input pixel, as a small network's float maps
        n, h, w, _ = tiles.shape
        return torch.zeros(n, 50, 2 * h, 2 * w)
    return MemoryPlanner(run_tile, torch.device("cpu"), TileGeometry.of(2.0), 8, max_memory=max_memory)


def test_an_impossible_budget_says_how_much_would_do(monkeypatch):
    """`--max-memory 500MB` where the model and its runtime already held 427 MB said 'raise it',
    not to what: the user guessed again, a minute of model loading each time."""
    from upsample.errors import UserError
    planner = _planner(monkeypatch, rss=600_000_000, max_memory=500_000_000)
    with pytest.raises(UserError) as err:
        planner.tile_side(4000, 3000, 3, np.uint8, reserved=100_000_000)
    text = str(err.value)
    assert "already uses 600 MB" in text and "to at least" in text
    least = int(text.split("to at least ")[1].split()[0])
    assert least >= 700  # what is held, and the output
    # that much gives a tile of at least the smallest side
    assert _planner(monkeypatch, rss=600_000_000, max_memory=least * 10 ** 6).tile_side(
        4000, 3000, 3, np.uint8, reserved=100_000_000) >= 16


def test_without_max_memory_the_refusal_does_not_name_it(monkeypatch):
    """Half the free memory too small for a tile blamed --max-memory, which was not given."""
    from upsample.errors import UserError
    planner = _planner(monkeypatch, rss=600_000_000, max_memory=None, free=2_000_000)
    with pytest.raises(UserError) as err:
        planner.tile_side(4000, 3000, 3, np.uint8)
    assert "--max-memory" not in str(err.value) and "free memory" in str(err.value)
