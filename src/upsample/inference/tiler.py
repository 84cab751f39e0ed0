"""`Tiler`: runs an upscaler over uint8/uint16 arrays tile by tile, memory bounded.

Only one tile (or one batch of tiles of the same shape) is ever in float; the input and the
output are uint arrays, so memory follows the tile size. The geometry is `tiling`'s, the pad and
the tile side `memory`'s. Tiles of one padded shape go through in batches (`batch_for`: given, 1
on the CPU, the fastest that fits on a GPU). Out of memory, a batch is retried one tile a call,
and a single tile is split in half and retried.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from ..data.degrade import output_size
from ..errors import UserError
from ..media.progress import progress_bar
from ..runtime.hardware import time_runs
from .memory import MemoryPlanner, default_pad, dense_side_limit
from .tiling import Region, TileGeometry, grow_to, pad_region, region_area, region_size, split, split_all
from .upscaler import Upscaler

BATCHES = (1, 2, 4, 8)  # images (video frames, tiles) per model call that may be timed


def is_oom(exc: BaseException) -> bool:
    """Whether `exc` is an out-of-memory error of torch (CUDA or CPU) or a runtime."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and ("out of memory" in str(exc).lower()
                                              or "can't allocate memory" in str(exc).lower())


def fastest_batch(run, sizes=BATCHES, repeats: int = 2, device: torch.device = torch.device("cpu")) -> int:
    """The n among `sizes` for which `run(n)` (one model call on n images on `device`) takes the
    least time per image: `hardware.time_runs`' median of `repeats` calls after one warm-up each."""
    per_image = {n: time_runs(lambda: run(n), device, 1, repeats)[0] / n for n in sizes}
    return min(sizes, key=per_image.get)


def is_channel_agnostic(up: Upscaler) -> bool:
    """True when the upscaler takes the channels it is given (bicubic, a Y-plane network), so
    gray and alpha need no expansion to RGB."""
    return up.core.channel_agnostic  # BicubicUpscaler declares it True


class Tiler:
    """Runs an upscaler over uint8/uint16 HxWxC arrays tile by tile (see the module docstring).
    `tile`: the side (0: whole images; None: from the memory budget); `pad`: the overlap (None:
    the receptive field); `tile_batch`: tiles per model call (None: see `batch_for`)."""

    def __init__(self, up: Upscaler, *, tile: int | None = None, pad: int | None = None,
                 max_memory: int | None = None, jobs: int = 1, progress: bool = False,
                 tile_batch: int | None = None):
        self.up, self.jobs, self.progress = up, max(1, jobs), progress
        if tile_batch is not None and tile_batch < 1:
            raise UserError(f"tiles per model call (--tile-batch, tile_batch=) must be auto or a whole number >= 1, got {tile_batch}")
        # Tiles of one shape per model call: given, or (None) 1 on the CPU - where OpenVINO and
        # torch already spread one tile over every thread - and on a GPU the fastest per tile of
        # BATCHES that fits, timed once per tile shape (`time_batches` overrides the device).
        self.tile_batch, self.time_batches = tile_batch, up.device.type != "cpu"
        self._batch_for: dict[tuple, int] = {}
        spec = up.spec or up.core.spec
        self.geometry = TileGeometry.of(up.scale, spec.pad_multiple if spec is not None else 1)
        # a graph of one fixed input size runs a tile of any size in windows of that size
        # (runtime.foreign_onnx.in_windows); a smaller tile is grown to it (`_padded`)
        self.fixed_size = spec.fixed_size if spec is not None else None
        if pad is not None and pad < 0:
            raise UserError(f"the tile overlap (--tile-pad, tile_pad=) must be >= 0, got {pad}")
        if tile is not None and tile < 0:
            raise UserError(f"the tile side (--tile, tile=) must be a whole number of pixels >= 1, "
                            f"or 0 for whole images; got {tile}")
        self.tile = tile
        self.pad = self.geometry.round_up(default_pad(up) if pad is None else int(pad))
        self.memory = MemoryPlanner(self._run, up.device, self.geometry, self.pad,
                                    max_memory=max_memory, jobs=self.jobs, side_limit=dense_side_limit(up))

    def _run(self, tiles: np.ndarray, maxval: float) -> torch.Tensor:
        """Padded tiles NxHxWxC (uint) -> upscaled float NCHW (C channels)."""
        if not tiles.flags.writeable:  # torch wants writable memory; a tile is small
            tiles = tiles.copy()
        x = torch.from_numpy(tiles).to(self.up.device).permute(0, 3, 1, 2).float().div_(maxval)
        c = x.shape[1]
        expand = not is_channel_agnostic(self.up) and c != 3
        if expand:  # gray (or alpha) through an RGB model: as gray RGB, back to one channel
            x = x.expand(-1, 3, -1, -1)
        with torch.no_grad():
            y = self.up(x)
        if expand:
            y = y.mean(1, keepdim=True)
        return y

    def bytes_per_pixel(self, channels: int, dtype: np.dtype) -> float:
        """Working memory per input pixel of one tile (see `MemoryPlanner.bytes_per_pixel`)."""
        return self.memory.bytes_per_pixel(channels, dtype)

    def plan_tile(self, h: int, w: int, channels: int, dtype: np.dtype, reserved: int = 0,
                  batch: int = 1) -> int:
        """The tile side for `batch` h x w images (0: in one piece). `reserved`: bytes the caller
        will still allocate (the output arrays) on the same device as the budget."""
        if self.tile is not None:
            return self.geometry.fixed_side(self.tile, h, w)
        return self.memory.tile_side(h, w, channels, dtype, reserved, batch)

    def batch_for(self, shape: tuple, dtype: np.dtype, available: int, maxval: float) -> int:
        """Tiles per model call for padded tiles of `shape` (N, H, W, C), `available` of them."""
        if self.tile_batch is not None:
            return min(self.tile_batch, available)
        if not self.time_batches or available < 2:
            return 1
        key = (shape, np.dtype(dtype).str)
        if key not in self._batch_for:
            self._batch_for[key] = self._time_batches(shape, dtype, maxval)
        return min(self._batch_for[key], available)

    def _time_batches(self, shape: tuple, dtype: np.dtype, maxval: float) -> int:
        """The fastest tiles per call, of those of BATCHES that fit, on random tiles of `shape`."""
        n, h, w, c = shape
        fits = self.memory.batches_that_fit(shape, dtype, BATCHES)
        tiles = np.random.default_rng(0).integers(0, int(maxval) + 1, (fits[-1] * n, h, w, c))
        tiles = tiles.astype(dtype)
        try:
            return fastest_batch(lambda b: self._run(tiles[:b * n], maxval), fits, device=self.up.device)
        except Exception as exc:  # the memory model was optimistic: one tile a call
            if not is_oom(exc):
                raise
            self._free_cached()
            return 1

    def _free_cached(self) -> None:
        if self.up.device.type == "cuda":
            torch.cuda.empty_cache()

    def upscale(self, arr: np.ndarray, *, tile: int | None = None, desc: str = "",
                maxval: float | None = None, bar=None, share: float = 1.0) -> np.ndarray:
        """Upscale an HxWxC (or a batch NxHxWxC) uint8/uint16 array to the same dtype, tile by
        tile. `maxval`: the code value that means 1.0 (default: the dtype's maximum; e.g. 1020
        for 10-bit video luma in 8-bit units); outputs are clamped to [0, maxval]. `bar`: the
        caller's progress bar, given `share` of each tile's pixels (`upscale_rows`: one bar for
        the whole image, not one per band nested in it), else a bar of its own."""
        if arr.ndim not in (3, 4) or arr.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"expected an [N]xHxWxC uint8/uint16 array, got {arr.shape} {arr.dtype}")
        batch = arr if arr.ndim == 4 else arr[None]
        n, h, w, c = batch.shape
        oh, ow = output_size(h, self.up.scale), output_size(w, self.up.scale)
        if tile is None:
            tile = self.plan_tile(h, w, c, arr.dtype, reserved=n * oh * ow * c * arr.itemsize, batch=n)
        out = np.empty((n, oh, ow, c), arr.dtype)
        maxval = float(np.iinfo(arr.dtype).max if maxval is None else maxval)
        regions = split((0, h, 0, w), tile if tile > 0 else max(h, w))
        own = bar is None
        if own:
            bar = progress_bar(h * w, self.progress and len(regions) > 1, desc=desc or "tiles", unit="px",
                               leave=False, unit_scale=True)
        while regions:
            group = self._take_group(regions, batch, maxval)
            try:
                self._run_group(batch, out, group, maxval)
            except Exception as exc:  # out of memory: fewer tiles a call, then smaller tiles
                if not is_oom(exc):
                    raise
                regions = self._retry_smaller(exc, group, regions)
                continue
            bar.update(share * sum(region_area(r) for r in group))
        if own:
            bar.close()
        return out if arr.ndim == 4 else out[0]

    def upscale_rows(self, arr: np.ndarray, write, *, tile: int, band: int, desc: str = "",
                     maxval: float | None = None) -> None:
        """Upscale an HxWxC uint array in horizontal bands of `band` input rows, each run with
        `pad` rows of its neighbours as context (as tiles are), and hand each band's output rows
        to `write` in order: the whole output never exists at once (`png_strips` writes it).
        `arr` may be any object with `shape` whose row slices, asked in order, are arrays
        (`streamed.StreamedRows`: the input is not whole either)."""
        h, w = arr.shape[:2]
        band, g = self.geometry.round_down(band), self.geometry
        # one bar in input pixels, counted by tile: a band of a slow model takes minutes (a bar
        # of bands would stand still), and a tile bar per band nested in it wrote cursor moves
        # and repeated lines into logs
        bar = progress_bar(h * w, self.progress, desc=desc or "tiles", unit="px", leave=False, unit_scale=True)
        for y0 in range(0, h, band):
            y1 = min(h, y0 + band)
            py0, py1 = max(0, y0 - self.pad), min(h, y1 + self.pad)
            out = self.upscale(arr[py0:py1], tile=tile, maxval=maxval, bar=bar, share=(y1 - y0) / (py1 - py0))
            base = g.out_index(py0, h)
            write(out[g.out_index(y0, h) - base:g.out_index(y1, h) - base])
            del out
        bar.close()

    def _retry_smaller(self, exc: BaseException, group: list[Region],
                       regions: list[Region]) -> list[Region]:
        """After an out-of-memory error on `group`: the regions to do, smaller calls first. A
        batch goes back one tile a call; a single tile (and all after it) in half the side."""
        self._free_cached()
        if len(group) > 1:
            self.tile_batch = 1
            print("note: out of memory; retrying one tile at a time", file=sys.stderr)
            return group + regions
        if not self.geometry.can_split(group[0]):
            raise exc  # no smaller tile to try
        half = self.geometry.half_side(group[0])
        self.tile = half if self.tile is None or self.tile <= 0 else min(self.tile, half)
        print(f"note: out of memory; retrying with {half}px tiles", file=sys.stderr)
        return split_all([group[0], *regions], half)

    def _padded(self, region: Region, h: int, w: int) -> Region:
        """The tile of `region` of an h x w image: with `pad` pixels of context, and at least a
        fixed-size graph's input size where the image has it."""
        return grow_to(pad_region(region, self.pad, h, w), self.fixed_size, h, w, self.geometry.align)

    def _take_group(self, regions: list[Region], arr: np.ndarray, maxval: float) -> list[Region]:
        """The next region and up to `batch_for` - 1 more whose padded tiles have its shape
        (interior tiles share one shape; the image's last row and column may not), taken out
        of `regions`."""
        n, h, w, c = arr.shape

        def shape_of(region):
            return region_size(self._padded(region, h, w))
        first = shape_of(regions[0])
        limit = self.batch_for((n, *first, c), arr.dtype, len(regions), maxval)
        if limit == 1:  # the CPU's case: no scan of the remaining regions per tile
            return [regions.pop(0)]
        take = [i for i, r in enumerate(regions) if shape_of(r) == first][:limit]
        group = [regions[i] for i in take]
        for i in reversed(take):
            del regions[i]
        return group

    def _run_group(self, arr: np.ndarray, out: np.ndarray, group: list[Region], maxval: float) -> None:
        """Upscale the regions of `group` (padded tiles of one shape) in one model call into `out`."""
        n, h, w = arr.shape[:3]
        pads = [self._padded(r, h, w) for r in group]
        tiles = np.concatenate([arr[:, py0:py1, px0:px1] for py0, py1, px0, px1 in pads])
        ys = self._run(np.ascontiguousarray(tiles), maxval)
        for k, (region, padded) in enumerate(zip(group, pads)):
            oy0, oy1, ox0, ox1 = self.geometry.out_region(region, h, w)
            cy0, cy1, cx0, cx1 = self.geometry.crop_in_tile(region, padded, h, w)
            y = ys[k * n:(k + 1) * n, :, cy0:cy1, cx0:cx1]
            if y.shape[-2:] != (oy1 - oy0, ox1 - ox0):
                raise RuntimeError(f"{self.up.name} gave {tuple(y.shape[-2:])} for a tile that "
                                   f"needs {(oy1 - oy0, ox1 - ox0)}: is the model's scale {self.up.scale}?")
            q = y.float().clamp_(0, 1).mul_(maxval).round_()
            q = q.to(torch.uint8 if out.dtype == np.uint8 else torch.int32).permute(0, 2, 3, 1).cpu().numpy()
            out[:, oy0:oy1, ox0:ox1] = q
