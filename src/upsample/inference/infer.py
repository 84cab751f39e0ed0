"""`upsample image` and the Python API: `upsample.load("vapsr-x2").upscale(image)`.

Images are processed in overlapping tiles: each tile is cut from the source with `pad` pixels of
its real neighbours on every side (fewer only at the image border, where the untiled run sees the
same border), upscaled, and its padding cropped away again, so that with a pad as wide as the
model's receptive field the tiled result equals the untiled one. Only one tile is ever in float;
the input and the output are uint8 (or uint16) arrays, so memory is bounded by the tile size.
The tile size comes from `--tile`, or from a memory budget (`--max-memory`, else half of the free
memory) and the bytes per pixel measured on a small probe tile. On CUDA an out-of-memory error
splits the tile and retries.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import weakref
from fractions import Fraction

import numpy as np
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from tqdm import tqdm

from ..data.degrade import imresize, output_size
from ..errors import UserError
from ..media.imageio import Planes, planes_from_pil, planes_to_pil
from .sizes import MAX_DEFAULT_PAD, parse_size
from .upscaler import BicubicUpscaler, ModelUpscaler, Upscaler
from .load import check_scale, load_upscaler

PROBE_SMALL, PROBE = 32, 96  # sides of the probe tiles that the bytes per pixel are measured on
MEMORY_SAFETY = 1.25  # head-room over the measured tile memory (allocator slack, fragmentation)
MIN_TILE = 16


# ----------------------------------------------------------------------------------------------
# Memory: budgets and measurement
# ----------------------------------------------------------------------------------------------

def rss_bytes() -> int:
    """This process's resident memory now."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux: peak instead of current, which errs safe
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def free_memory(device: torch.device) -> int:
    """Memory free for new work on the device: GPU free memory, or the OS's MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 1024 ** 3


class PeakTensorMemory(TorchDispatchMode):
    """Peak bytes of tensor storage alive at once among the tensors created while it is active
    (every aten op's outputs, views counted once per storage). Works on any device."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._storages: dict[int, list[int]] = {}  # storage key -> [nbytes, live tensors]
        self._tensors: dict[int, weakref.ref] = {}
        self._lock = threading.Lock()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        ref = self._tensors.get(id(t))
        if ref is not None and ref() is t:
            return  # an in-place op's output: already counted
        storage = t.untyped_storage()
        key = storage.data_ptr() or id(storage)
        with self._lock:
            entry = self._storages.get(key)
            if entry is None:
                entry = self._storages[key] = [storage.nbytes(), 0]
                self.live += entry[0]
                self.peak = max(self.peak, self.live)
            entry[1] += 1
            self._tensors[id(t)] = weakref.ref(t)
        weakref.finalize(t, self._release, key, id(t))

    def _release(self, key: int, tid: int) -> None:
        with self._lock:
            self._tensors.pop(tid, None)
            entry = self._storages.get(key)
            if entry is not None:
                entry[1] -= 1
                if entry[1] <= 0:
                    self.live -= entry[0]
                    del self._storages[key]


def _peak_rss_of(fn) -> int:
    """Peak resident-memory growth while `fn()` runs, sampled by a thread every millisecond
    (rather than resetting the kernel's high-water mark, which would also reset what
    getrusage and /usr/bin/time report for the whole process)."""
    before = peak = rss_bytes()
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_bytes())
            done.wait(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return max(0, max(peak, rss_bytes()) - before)


def receptive_radius(model: torch.nn.Module, channels: int = 3) -> float:
    """An upper bound of the network's receptive-field radius in input pixels: the sum over its
    convolutions of dilation * (kernel - 1) / 2, each divided by the resolution it runs at
    (measured with hooks on a forward of an 8x8 input on the CPU: microseconds, where the meta
    device's first use imports torch's whole decomposition stack, seconds). Infinite with global
    pooling."""
    total = 0.0
    size = 8
    hooks = []

    def hook(mod, inputs, _output):
        nonlocal total
        if isinstance(mod, (torch.nn.AdaptiveAvgPool2d, torch.nn.AdaptiveMaxPool2d)):
            total = math.inf
            return
        k, d = mod.kernel_size, mod.dilation
        k = k if isinstance(k, tuple) else (k, k)
        d = d if isinstance(d, tuple) else (d, d)
        res = inputs[0].shape[-1] / size
        total += max(d[i] * (k[i] - 1) / 2 for i in range(2)) / res

    for m in model.modules():
        if isinstance(m, (torch.nn.modules.conv._ConvNd, torch.nn.modules.pooling._MaxPoolNd,
                          torch.nn.modules.pooling._AvgPoolNd, torch.nn.AdaptiveAvgPool2d,
                          torch.nn.AdaptiveMaxPool2d)):
            hooks.append(m.register_forward_hook(hook))
    try:
        p = next(model.parameters(), None)
        net = model
        if p is not None and (p.device.type != "cpu" or p.dtype != torch.float32):
            import copy
            net = copy.deepcopy(model).to(device="cpu", dtype=torch.float32)
        with torch.no_grad():
            net(torch.zeros(1, channels, size, size))
    finally:
        for h in hooks:
            h.remove()
    return total


# ----------------------------------------------------------------------------------------------
# Upscalers for inference: outscale, half precision
# ----------------------------------------------------------------------------------------------

class ResizedUpscaler(Upscaler):
    """A model followed by `degrade.imresize` to any final factor (`--outscale`)."""

    def __init__(self, inner: Upscaler, outscale: float):
        self.inner, self.scale = inner, float(outscale)
        self.name, self.device = f"{inner.name}+resize", inner.device
        self.model, self.backend = getattr(inner, "model", None), getattr(inner, "backend", "torch")

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x)
        size = (output_size(x.shape[-2], self.scale), output_size(x.shape[-1], self.scale))
        return imresize(y, self.scale / self.inner.scale, size=size)


def half_upscaler(up: Upscaler) -> Upscaler:
    """The torch network in half precision (fp16 on CUDA, bf16 on CPU, where fp16 is slow); the
    colour and resize edges stay float32. Bicubic is returned as is."""
    if isinstance(up, BicubicUpscaler):
        return up
    if not isinstance(up, ModelUpscaler) or getattr(up, "backend", "torch") != "torch":
        raise UserError("--half works with the torch backend only")
    dtype = torch.float16 if up.device.type == "cuda" else torch.bfloat16
    net = up.model.to(dtype)

    def run_net(x: torch.Tensor) -> torch.Tensor:
        return net(x.to(dtype)).float()

    return ModelUpscaler(net, run_net, scale=up.scale, name=up.name, backend="torch", device=up.device)


def default_model(scale: float) -> str:
    """The best shipped model for `scale`: among the registered generators with weights in the
    package that serve it (their own scale, or any scale for VDSR), the one with the highest mean
    benchmark PSNR at that scale in its shipped NAME.eval.json; else "bicubic"."""
    import json

    from ..models import registry
    if not float(scale).is_integer():
        return "bicubic"
    best, best_psnr = "bicubic", float("-inf")
    for name in registry.list_models("generator"):
        weights = registry.weights_path(name)
        if not weights or registry.get_spec(name).scale not in (None, int(scale)):
            continue
        try:
            report = json.loads(weights.with_suffix(".eval.json").read_text())
            sets = report["scales"][str(int(scale))]["model"]
            psnr = sum(v["psnr"] for v in sets.values()) / len(sets)
        except (OSError, ValueError, KeyError, ZeroDivisionError):
            continue  # shipped without an evaluation at this scale: not a default
        if psnr > best_psnr:
            best, best_psnr = name, psnr
    return best


def is_channel_agnostic(up: Upscaler) -> bool:
    """True when the upscaler takes the channels it is given (bicubic, a Y-plane network), so
    gray and alpha need no expansion to RGB."""
    inner = getattr(up, "inner", up)
    return isinstance(inner, BicubicUpscaler) or getattr(inner, "channel_agnostic", False)


# ----------------------------------------------------------------------------------------------
# The tiler
# ----------------------------------------------------------------------------------------------

def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and ("out of memory" in str(exc).lower()
                                              or "can't allocate memory" in str(exc).lower())


BATCHES = (1, 2, 4, 8)  # images (video frames, tiles) per model call that may be timed


def fastest_batch(run, sizes=BATCHES, repeats: int = 2, device: torch.device = torch.device("cpu")) -> int:
    """The n among `sizes` for which `run(n)` (one model call on n images on `device`) takes the
    least time per image: `bench.time_runs`' median of `repeats` calls after one warm-up each."""
    from ..runtime.hardware import time_runs
    per_image = {n: time_runs(lambda: run(n), device, 1, repeats)[0] / n for n in sizes}
    return min(sizes, key=per_image.get)


def _split(region: tuple[int, int, int, int], side: int) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) cut into tiles of at most side x side, row by row."""
    y0, y1, x0, x1 = region
    return [(y, min(y + side, y1), x, min(x + side, x1))
            for y in range(y0, y1, side) for x in range(x0, x1, side)]


class Tiler:
    """Runs an upscaler over uint8/uint16 HxWxC arrays tile by tile (see the module docstring)."""

    def __init__(self, up: Upscaler, *, tile: int | None = None, pad: int | None = None,
                 max_memory: int | None = None, jobs: int = 1, progress: bool = False,
                 tile_batch: int | None = None):
        self.up, self.jobs, self.progress = up, max(1, jobs), progress
        if tile_batch is not None and tile_batch < 1:
            raise UserError(f"--tile-batch must be auto or a whole number >= 1, got {tile_batch}")
        # Tiles of one shape per model call: given, or (None) 1 on the CPU - where OpenVINO and
        # torch already spread one tile over every thread - and on a GPU the fastest per tile of
        # BATCHES that fits, timed once per tile shape (`time_batches` overrides the device).
        self.tile_batch, self.time_batches = tile_batch, up.device.type != "cpu"
        self._batch_for: dict[tuple, int] = {}
        frac = Fraction(up.scale).limit_denominator(1000)
        if abs(float(frac) - up.scale) > 1e-9:
            raise UserError(f"scale {up.scale} is not a ratio of small integers; tiling needs one")
        self.p, self.q = frac.numerator, frac.denominator
        # Tiles start on multiples of `align` so that their output starts on whole pixels (q) and
        # their size suits the network (e.g. RRDBNet x2 wants even sizes).
        spec = getattr(up, "spec", None) or getattr(getattr(up, "inner", None), "spec", None)
        mult = spec.pad_multiple if spec is not None else 1
        self.align = self.q * mult // math.gcd(self.q, mult)
        if pad is not None and pad < 0:
            raise UserError(f"--tile-pad must be >= 0, got {pad}")
        self.tile = tile
        self.pad = self._round_up(self.default_pad() if pad is None else int(pad))
        self.max_memory = max_memory
        self._bpp: dict[tuple, float] = {}
        self._lock = threading.Lock()

    def _round_up(self, n: int) -> int:
        return -(-n // self.align) * self.align

    def _round_down(self, n: int) -> int:
        return max(self.align, n // self.align * self.align)

    def default_pad(self) -> int:
        """Bicubic: its support (exact). A network: its receptive field, at most MAX_DEFAULT_PAD.
        A final resize (--outscale) adds its own support."""
        inner = getattr(self.up, "inner", self.up)
        resize = math.ceil(2 / min(1.0, self.up.scale)) + 2
        if isinstance(inner, BicubicUpscaler):
            return resize
        net = getattr(inner, "model", None)
        spec = getattr(inner, "spec", None)
        radius = MAX_DEFAULT_PAD
        if net is not None and spec is not None:
            try:
                radius = min(MAX_DEFAULT_PAD, math.ceil(receptive_radius(net, spec.channels)))
            except Exception:  # a network the meta device cannot run: keep the cap
                radius = MAX_DEFAULT_PAD
            if spec.pre_upsample:
                radius += 2  # the bicubic pre-upsampling's support
        if inner is not self.up:
            radius += resize
        return radius

    # --- memory model -------------------------------------------------------------------------

    def _run(self, tile: np.ndarray, maxval: float) -> torch.Tensor:
        """One padded tile NxHxWxC (uint) -> upscaled float NCHW (C channels)."""
        if not tile.flags.writeable:  # torch wants writable memory; a tile is small
            tile = tile.copy()
        x = torch.from_numpy(tile).to(self.up.device).permute(0, 3, 1, 2).float().div_(maxval)
        c = x.shape[1]
        expand = not is_channel_agnostic(self.up) and c != 3
        if expand:
            x = x.expand(-1, 3, -1, -1)
        with torch.no_grad():
            y = self.up(x)
        if expand:
            y = y.mean(1, keepdim=True)
        return y

    def bytes_per_pixel(self, channels: int, dtype: np.dtype) -> float:
        """Working memory per input pixel of one tile, measured on probe tiles: the storage of the
        tensors alive at once (a dispatch mode sees every torch op), or, where a runtime allocates
        outside torch (onnxruntime, openvino), the growth of resident (or CUDA) memory from a
        small probe to a larger one, so one-time start-up allocations do not count as per-pixel."""
        key = (channels, np.dtype(dtype).str)
        with self._lock:
            if key in self._bpp:
                return self._bpp[key]
            measured = []
            for side in (self._round_up(PROBE_SMALL), self._round_up(PROBE)):
                probe = np.random.default_rng(0).integers(0, 255, (1, side, side, channels)).astype(dtype)
                tracker = PeakTensorMemory()

                def go():
                    with tracker:
                        y = self._run(probe, float(np.iinfo(dtype).max))
                        del y

                if self.up.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(self.up.device)
                    base = torch.cuda.memory_allocated(self.up.device)
                    go()
                    grown = torch.cuda.max_memory_allocated(self.up.device) - base
                else:
                    grown = _peak_rss_of(go)
                measured.append((side * side, tracker.peak + probe.nbytes, grown))
            (px0, _, _), (px1, tracked, grown) = measured
            bpp = max(tracked / px1, grown / (px1 - px0))
            self._bpp[key] = bpp
            return bpp

    def plan_tile(self, h: int, w: int, channels: int, dtype: np.dtype, reserved: int = 0,
                  batch: int = 1) -> int:
        """The tile side for `batch` h x w images (0: in one piece). `reserved`: bytes the caller
        will still allocate (the output arrays) on the same device as the budget."""
        if self.tile is not None:
            return 0 if self.tile <= 0 or self.tile >= max(h, w) else self._round_down(self.tile)
        budget = self._budget(reserved)
        bpp = self.bytes_per_pixel(channels, dtype) * MEMORY_SAFETY * batch
        if bpp * h * w <= budget:
            return 0
        side = math.isqrt(max(0, int(budget / bpp))) - 2 * self.pad
        if side < MIN_TILE:
            need = bpp * (MIN_TILE + 2 * self.pad) ** 2
            raise UserError(f"--max-memory leaves too little for even a {MIN_TILE}px tile "
                            f"({max(0, budget) / 1e6:.0f} MB for tiles, about {need / 1e6:.0f} MB "
                            f"needed): raise it, or lower --tile-pad")
        return self._round_down(min(side, max(h, w)))

    def _budget(self, reserved: int = 0) -> int:
        """Bytes the tiles of one job may use now (`reserved`: what the caller will still
        allocate on the CPU)."""
        cpu = self.up.device.type == "cpu"
        if self.max_memory is not None:
            budget = self.max_memory - (rss_bytes() if cpu else torch.cuda.memory_allocated(self.up.device))
        else:
            budget = free_memory(self.up.device) // 2
        return budget // self.jobs - (reserved if cpu else 0)

    def batch_for(self, shape: tuple, dtype: np.dtype, available: int, maxval: float) -> int:
        """Tiles per model call for padded tiles of `shape` (N, H, W, C), `available` of them."""
        if self.tile_batch is not None:
            return min(self.tile_batch, available)
        if not self.time_batches or available < 2:
            return 1
        n, h, w, c = shape
        key = (shape, np.dtype(dtype).str)
        if key not in self._batch_for:
            bpp = self.bytes_per_pixel(c, dtype) * MEMORY_SAFETY * n * h * w
            budget = self._budget()
            fits = [b for b in BATCHES if b == 1 or b * bpp <= budget]
            tiles = np.random.default_rng(0).integers(0, int(maxval) + 1, (fits[-1] * n, h, w, c))
            tiles = tiles.astype(dtype)
            try:
                self._batch_for[key] = fastest_batch(lambda b: self._run(tiles[:b * n], maxval), fits,
                                                     device=self.up.device)
            except Exception as exc:  # the memory model was optimistic: one tile a call
                if not _is_oom(exc):
                    raise
                if self.up.device.type == "cuda":
                    torch.cuda.empty_cache()
                self._batch_for[key] = 1
        return min(self._batch_for[key], available)

    # --- running -------------------------------------------------------------------------------

    def out_index(self, i: int, n: int) -> int:
        """Output coordinate of input coordinate i (aligned, or the end n of the image)."""
        return output_size(n, self.up.scale) if i >= n else i * self.p // self.q

    def upscale(self, arr: np.ndarray, *, tile: int | None = None, desc: str = "",
                maxval: float | None = None) -> np.ndarray:
        """Upscale an HxWxC (or a batch NxHxWxC) uint8/uint16 array to the same dtype, tile by
        tile. `maxval`: the code value that means 1.0 (default: the dtype's maximum; e.g. 1020
        for 10-bit video luma in 8-bit units); outputs are clamped to [0, maxval]."""
        if arr.ndim not in (3, 4) or arr.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"expected an [N]xHxWxC uint8/uint16 array, got {arr.shape} {arr.dtype}")
        batch = arr if arr.ndim == 4 else arr[None]
        n, h, w, c = batch.shape
        oh, ow = output_size(h, self.up.scale), output_size(w, self.up.scale)
        if tile is None:
            tile = self.plan_tile(h, w, c, arr.dtype, reserved=n * oh * ow * c * arr.itemsize, batch=n)
        out = np.empty((n, oh, ow, c), arr.dtype)
        maxval = float(np.iinfo(arr.dtype).max if maxval is None else maxval)
        regions = _split((0, h, 0, w), tile if tile > 0 else max(h, w))
        bar = tqdm(total=h * w, desc=desc or "tiles", unit="px", unit_scale=True, leave=False,
                   file=sys.stderr, disable=not self.progress or len(regions) < 2)
        while regions:
            group = self._take_group(regions, batch, maxval)
            try:
                self._regions(batch, out, group, maxval)
            except Exception as exc:  # out of memory: fewer tiles a call, then smaller tiles
                if not _is_oom(exc):
                    raise
                if self.up.device.type == "cuda":
                    torch.cuda.empty_cache()
                if len(group) > 1:
                    self.tile_batch = 1
                    regions[:0] = group
                    print("note: out of memory; retrying one tile at a time", file=sys.stderr)
                    continue
                y0, y1, x0, x1 = group[0]
                if max(y1 - y0, x1 - x0) <= max(MIN_TILE, self.align):
                    raise
                half = self._round_down(max(y1 - y0, x1 - x0) // 2)
                regions = [part for r in [(y0, y1, x0, x1), *regions] for part in _split(r, half)]
                self.tile = half if self.tile is None or self.tile <= 0 else min(self.tile, half)
                print(f"note: out of memory; retrying with {half}px tiles", file=sys.stderr)
                continue
            bar.update(sum((y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in group))
        bar.close()
        return out if arr.ndim == 4 else out[0]

    def _padded(self, region, h: int, w: int) -> tuple[int, int, int, int]:
        y0, y1, x0, x1 = region
        return max(0, y0 - self.pad), min(h, y1 + self.pad), max(0, x0 - self.pad), min(w, x1 + self.pad)

    def _take_group(self, regions: list, arr: np.ndarray, maxval: float) -> list:
        """The next region and up to `batch_for` - 1 more whose padded tiles have its shape
        (interior tiles share one shape; the image's last row and column may not), taken out
        of `regions`."""
        n, h, w, c = arr.shape

        def shape_of(region):
            py0, py1, px0, px1 = self._padded(region, h, w)
            return py1 - py0, px1 - px0
        first = shape_of(regions[0])
        limit = self.batch_for((n, *first, c), arr.dtype, len(regions), maxval)
        if limit == 1:  # the CPU's case: no scan of the remaining regions per tile
            return [regions.pop(0)]
        take = [i for i, r in enumerate(regions) if shape_of(r) == first][:limit]
        group = [regions[i] for i in take]
        for i in reversed(take):
            del regions[i]
        return group

    def _regions(self, arr, out, group, maxval) -> None:
        """Upscale the regions of `group` (padded tiles of one shape) in one model call."""
        n, h, w = arr.shape[:3]
        pads = [self._padded(r, h, w) for r in group]
        tiles = np.concatenate([arr[:, py0:py1, px0:px1] for py0, py1, px0, px1 in pads])
        ys = self._run(np.ascontiguousarray(tiles), maxval)
        for k, ((y0, y1, x0, x1), (py0, _, px0, _)) in enumerate(zip(group, pads)):
            oy0, oy1, ox0, ox1 = (self.out_index(y0, h), self.out_index(y1, h),
                                  self.out_index(x0, w), self.out_index(x1, w))
            oy, ox = self.out_index(py0, h), self.out_index(px0, w)
            y = ys[k * n:(k + 1) * n, :, oy0 - oy:oy1 - oy, ox0 - ox:ox1 - ox]
            if y.shape[-2:] != (oy1 - oy0, ox1 - ox0):
                raise RuntimeError(f"{self.up.name} gave {tuple(y.shape[-2:])} for a tile that "
                                   f"needs {(oy1 - oy0, ox1 - ox0)}: is the model's scale {self.up.scale}?")
            q = y.float().clamp_(0, 1).mul_(maxval).round_()
            q = q.to(torch.uint8 if out.dtype == np.uint8 else torch.int32).permute(0, 2, 3, 1).cpu().numpy()
            out[:, oy0:oy1, ox0:ox1] = q


# ----------------------------------------------------------------------------------------------
# The Python API
# ----------------------------------------------------------------------------------------------

class ImageUpscaler:
    """Upscales PIL images and numpy arrays with one upscaler: `upsample.load(...)` makes one.

    `upscale(image)` takes a PIL image (any mode: RGB, RGBA, L, LA, P, 16-bit I;16 ...) or a numpy
    array (uint8 or uint16; HxW gray, HxWx1, HxWx2 gray+alpha, HxWx3 RGB, HxWx4 RGBA) and returns
    the same kind: PIL in PIL out (palette images come back RGB or RGBA), array in array out.
    Alpha is upscaled by bicubic (`alpha_mode="bicubic"`) or by the model ("model")."""

    def __init__(self, up: Upscaler, *, tile: int | None = None, tile_pad: int | None = None,
                 max_memory: int | str | None = None, alpha_mode: str = "bicubic", jobs: int = 1,
                 progress: bool = False, verbose: bool = False, tile_batch: int | None = None):
        if alpha_mode not in ("bicubic", "model"):
            raise UserError(f"alpha mode must be bicubic or model, got {alpha_mode!r}")
        self.up, self.verbose = up, verbose
        mem = None if max_memory is None else parse_size(max_memory)
        self.tiler = Tiler(up, tile=tile, pad=tile_pad, max_memory=mem, jobs=jobs, progress=progress,
                           tile_batch=tile_batch)
        if alpha_mode == "bicubic" and not is_channel_agnostic(up):
            self.alpha_tiler = Tiler(BicubicUpscaler(up.scale, up.device), tile=tile, max_memory=mem,
                                     jobs=jobs, progress=progress)
        else:
            self.alpha_tiler = self.tiler

    @property
    def scale(self) -> float:
        return self.up.scale

    def upscale_planes(self, planes: Planes, desc: str = "") -> Planes:
        c, a = planes.color, planes.alpha
        oh, ow = output_size(c.shape[0], self.scale), output_size(c.shape[1], self.scale)
        reserved = oh * ow * c.itemsize * (c.shape[2] + (1 if a is not None else 0))
        tile = self.tiler.plan_tile(c.shape[0], c.shape[1], c.shape[2], c.dtype, reserved)
        if tile and self.verbose:
            tqdm.write(f"note: {desc or 'image'}: {c.shape[1]}x{c.shape[0]} in {tile}px tiles, "
                       f"pad {self.tiler.pad}", file=sys.stderr)
        color = self.tiler.upscale(c, tile=tile, desc=desc)
        alpha = None
        if a is not None:
            if self.alpha_tiler is self.tiler:
                atile = tile
            else:
                atile = self.alpha_tiler.plan_tile(a.shape[0], a.shape[1], 1, a.dtype, oh * ow * a.itemsize)
            alpha = self.alpha_tiler.upscale(a, tile=atile, desc=desc)
        return Planes(color, alpha, planes.info)

    def upscale(self, image):
        if isinstance(image, Image.Image):
            return planes_to_pil(self.upscale_planes(planes_from_pil(image)))
        if isinstance(image, np.ndarray):
            return self._upscale_array(image)
        raise TypeError(f"upscale takes a PIL image or a numpy array, got {type(image).__name__}")

    def _upscale_array(self, arr: np.ndarray) -> np.ndarray:
        if arr.dtype not in (np.uint8, np.uint16):
            raise TypeError(f"arrays must be uint8 or uint16, got {arr.dtype}")
        a3 = arr[..., None] if arr.ndim == 2 else arr
        if a3.ndim != 3 or a3.shape[2] not in (1, 2, 3, 4):
            raise TypeError(f"arrays must be HxW or HxWxC with C in 1..4, got shape {arr.shape}")
        has_alpha = a3.shape[2] in (2, 4)
        color = np.ascontiguousarray(a3[..., :-1] if has_alpha else a3)
        alpha = np.ascontiguousarray(a3[..., -1:]) if has_alpha else None
        res = self.upscale_planes(Planes(color, alpha))
        out = res.color if res.alpha is None else np.concatenate([res.color, res.alpha], 2)
        return out[..., 0] if arr.ndim == 2 else out


def load(spec: str = "bicubic", scale: float | None = None, *, backend: str = "auto",
         device: str = "cpu", tile: int | None = None, tile_pad: int | None = None,
         max_memory: int | str | None = None, half: bool = False, outscale: float | None = None,
         alpha_mode: str = "bicubic", precision: str = "auto", threads: int | None = None,
         tile_batch: int | None = None) -> ImageUpscaler:
    """An `ImageUpscaler` for a model: "bicubic" (needs `scale`), a registered name such as
    "vapsr-x2", or a checkpoint path. `tile`: tile side in pixels (0: never tile; None: from
    `max_memory`, e.g. "2GB", or half the free memory); `tile_batch`: tiles per model call (None:
    1 on the CPU, timed on a GPU); `outscale`: final size factor (the model, then a bicubic
    resize)."""
    up = make_upscaler(spec, scale, backend=backend, device=device, half=half, outscale=outscale,
                       precision=precision, threads=threads)
    return ImageUpscaler(up, tile=tile, tile_pad=tile_pad, max_memory=max_memory, alpha_mode=alpha_mode,
                         tile_batch=tile_batch)


def make_upscaler(model: str | None, scale=None, *, backend: str = "auto", device: str = "cpu",
                  half: bool = False, outscale=None, precision: str = "auto",
                  threads: int | None = None) -> Upscaler:
    """The upscaler for the CLI and the API: `model` None means `default_model(scale or 2)` at
    that scale; bicubic defaults to x2; `half` and `outscale` (a final resize) applied."""
    scale = check_scale(scale) if scale is not None else None
    if model is None:  # the default model serves the scale asked, x2 if none was
        scale = scale or 2.0
        model = default_model(scale)
    if model == "bicubic" and scale is None:
        scale = 2.0
    if half and backend == "auto":  # --half with auto: the half type of the device, unchecked
        precision, half = ("fp16" if str(device).startswith("cuda") else "bf16"), False
    up = load_upscaler(model, scale=scale, backend=backend, device=device, precision=precision,
                       threads=threads)
    if half:
        up = half_upscaler(up)
    final = check_scale(outscale) if outscale is not None else up.scale
    if isinstance(up, BicubicUpscaler):
        return BicubicUpscaler(final, up.device)
    if abs(final - up.scale) > 1e-12:
        return ResizedUpscaler(up, final)
    return up
