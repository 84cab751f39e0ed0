"""--max-memory and outputs written whole (review s10, measured).

A 6000x4000 RGBA PNG with `--model espcn-x2 --max-memory 1G` peaked at 1.36 GB resident: the
check of outputs encoded whole left out what the process holds (the model, its runtime: about
0.4-0.6 GB), which --max-memory bounds as the tiles' plan does. Its save-time sizes are those
measured on 12000x8000 planes: RGB +4 bytes a pixel (Pillow's copy), RGBA +the joined array
(Pillow maps it), LA both, L nothing.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from upsample import cli
from upsample.errors import UserError
from upsample.inference import batch
from upsample.media.imageio import Planes


def _planes(channels: int, alpha: bool, h: int = 10, w: int = 20) -> Planes:
    a = np.zeros((h, w, 1), np.uint8) if alpha else None
    return Planes(np.zeros((h, w, channels), np.uint8), a)


@pytest.mark.parametrize("channels, alpha, per_pixel", [
    (3, False, 3 + 4),          # the RGB planes and Pillow's RGBX copy
    (3, True, 4 + 4),           # the planes and their join, which Pillow maps
    (1, True, 2 + 2 + 4),       # LA: the planes, the join, and Pillow's 4-byte copy
    (1, False, 1),              # L: Pillow maps the array
])
def test_whole_save_bytes_counts_alpha_join_and_pillow(channels, alpha, per_pixel):
    pixels = 20 * 40  # 10x20 at x2
    assert batch.whole_save_bytes(_planes(channels, alpha), 2.0) == per_pixel * pixels


def _check(max_memory: int, planes: Planes) -> None:
    engines = SimpleNamespace(max_memory=max_memory, scale=2.0)
    batch.Engines._check_whole_output(engines, batch.Path("a.png"), batch.Path("a_x2.png"), planes)


def test_whole_output_counts_what_the_process_holds(monkeypatch):
    """The same RGBA output fits a cap beside a small process and is refused beside a large one."""
    planes = _planes(3, True, 100, 100)
    need = batch.whole_save_bytes(planes, 2.0)
    inputs = planes.color.nbytes + planes.alpha.nbytes
    cap = 50_000_000
    monkeypatch.setattr(batch, "resident_bytes", lambda: inputs + cap - need - 1)
    _check(cap, planes)  # fits, just
    monkeypatch.setattr(batch, "resident_bytes", lambda: inputs + cap - need + 1)
    with pytest.raises(UserError, match="encoded whole.*with what this process holds.*remove the alpha first"):
        _check(cap, planes)  # not "write .png": the output is a PNG, and one with alpha is whole in any format
    engines = SimpleNamespace(max_memory=cap, scale=2.0)
    with pytest.raises(UserError, match="write .png \\(written in strips\\)"):  # a JPEG of RGB: a PNG is
        batch.Engines._check_whole_output(engines, batch.Path("a.png"), batch.Path("a_x2.jpg"), _planes(3, False, 100, 180))


def test_rgba_refused_in_one_line_when_the_process_leaves_too_little(tmp_path, capsys, monkeypatch):
    """CLI: an RGBA PNG (written whole) whose output alone fits the cap, but not beside what the
    process already holds, is one `error:` line and no file."""
    src = tmp_path / "a.png"
    Image.fromarray(np.full((64, 64, 4), 200, np.uint8), "RGBA").save(src)
    monkeypatch.setattr(batch, "resident_bytes", lambda: 49_990_000)
    out = tmp_path / "o.png"
    rc = cli.main(["image", str(src), "-o", str(out), "--model", "bicubic", "--max-memory", "50MB"])
    err = capsys.readouterr().err
    assert rc == 2 and "encoded whole" in err and "Traceback" not in err, err
    assert not out.exists()


# --- tiles past the probes' regime ------------------------------------------------------------
# The bytes per pixel are measured on 32 and 96 px probes, where `imresize` multiplies by dense
# matrices; past DENSE_LIMIT it gathers taps, at 157 B/px for a 2048 px bicubic tile against 81
# planned: the alpha of a 6000x4000 RGBA picture took `--max-memory 2G` to 2.6 GB.

from upsample.data.bicubic import DENSE_LIMIT  # noqa: E402
from upsample.inference import memory  # noqa: E402
from upsample.inference.tiler import Tiler  # noqa: E402
from upsample.inference.upscaler import BicubicUpscaler  # noqa: E402


def test_bicubic_tiles_stay_dense_under_max_memory(monkeypatch):
    """A budget that would take a 3000 px picture whole still cuts it into tiles whose padded
    side keeps both resizes dense (in * out <= DENSE_LIMIT)."""
    tiler = Tiler(BicubicUpscaler(2.0), max_memory=10 ** 12)
    monkeypatch.setattr(memory, "resident_bytes", lambda: 0)
    side = tiler.plan_tile(3000, 3000, 1, np.uint8)
    assert 0 < side and (side + 2 * tiler.pad) * 2 * (side + 2 * tiler.pad) <= DENSE_LIMIT
    assert side >= 1024  # large tiles still: only the resize's regime bounds them
    assert tiler.plan_tile(1000, 1000, 1, np.uint8) == 0  # within the limit: whole, as before


def test_no_limit_without_max_memory_or_torch_resize(monkeypatch):
    """Half the free memory (no --max-memory) keeps whole pictures whole, and an upscaler that
    resizes nothing in torch has no side limit."""
    monkeypatch.setattr(memory, "free_memory", lambda device: 10 ** 12)
    assert Tiler(BicubicUpscaler(2.0)).plan_tile(3000, 3000, 1, np.uint8) == 0

    class Plain(memory.Upscaler):
        spec = SimpleNamespace(input="rgb", pre_upsample=False)
    assert memory.dense_side_limit(Plain()) is None
    assert memory.dense_side_limit(BicubicUpscaler(4.0)) == 1024
