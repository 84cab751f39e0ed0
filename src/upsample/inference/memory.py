"""What a tile needs from the model: context (the pad) and memory (the tile side).

The pad is the network's receptive field (`receptive_radius`, at most MAX_DEFAULT_PAD), so that
tiled and untiled results agree. The tile side comes from a budget (`--max-memory`, else half of
the free memory) and the bytes per input pixel measured on two small probe tiles: the tensor
storage alive at once (a dispatch mode sees every torch op), or the growth of resident (or CUDA)
memory where a runtime allocates outside torch (onnxruntime, openvino).
"""

from __future__ import annotations

import copy
import math
import sys
import threading
import weakref
from typing import Callable

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..data.bicubic import DENSE_LIMIT
from ..data.degrade import drop_resize_caches
from ..errors import UserError
from .sizes import MAX_DEFAULT_PAD, resident_bytes
from .tiling import MIN_TILE, TileGeometry
from .upscaler import BicubicUpscaler, ModelUpscaler, Upscaler

PROBE_SMALL, PROBE = 32, 96  # sides of the probe tiles that the bytes per pixel are measured on
MEMORY_SAFETY = 1.25  # head-room over the measured tile memory (allocator slack, fragmentation)


# ----------------------------------------------------------------------------------------------
# Measuring memory
# ----------------------------------------------------------------------------------------------

def return_free_heap() -> None:
    """Hand the C heap's free pages back to the OS (glibc's malloc_trim), so that resident memory
    counts what is held, not what earlier images freed: with --max-memory a folder's second
    large image was refused for the first one's freed buffers."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: resident memory errs on the safe side


def release_unheld() -> None:
    """Let go of what earlier images left that nothing holds (cached resize weights, free heap
    pages), so that resident memory counts only what this image's budget must respect."""
    drop_resize_caches()
    return_free_heap()


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

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # torch wraps a mode's __torch_dispatch__ in dynamo.disable unless told not to, and that
        # imports torch._dynamo on the first op: 1.1 s of every `upsample image` run that plans
        # tiles (where dynamo is loaded already, `tensor_tracker` gives the wrapped kind)
        return False

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


class _UntracedPeakTensorMemory(PeakTensorMemory):
    """The tracker as torch makes a mode by default: its dispatch under dynamo.disable, so that a
    compiled network run under it (CUDA's auto may pick torch.compile) is not traced into it
    (recompiled frames, a recompile-limit warning)."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return super().__torch_dispatch__(func, types, args, kwargs)


def tensor_tracker() -> PeakTensorMemory:
    """A PeakTensorMemory that imports no dynamo where none is loaded, and keeps it out where it is."""
    return _UntracedPeakTensorMemory() if "torch._dynamo" in sys.modules else PeakTensorMemory()


def _peak_rss_of(fn) -> int:
    """Peak resident-memory growth while `fn()` runs, sampled by a thread every millisecond
    (rather than resetting the kernel's high-water mark, which would also reset what
    getrusage and /usr/bin/time report for the whole process)."""
    before = peak = resident_bytes()
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, resident_bytes())
            done.wait(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return max(0, max(peak, resident_bytes()) - before)


# ----------------------------------------------------------------------------------------------
# Context: the pad
# ----------------------------------------------------------------------------------------------

_RECEPTIVE_LAYERS = (torch.nn.modules.conv._ConvNd, torch.nn.modules.pooling._MaxPoolNd,
                     torch.nn.modules.pooling._AvgPoolNd, torch.nn.AdaptiveAvgPool2d,
                     torch.nn.AdaptiveMaxPool2d)


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
        if isinstance(m, _RECEPTIVE_LAYERS):
            hooks.append(m.register_forward_hook(hook))
    try:
        p = next(model.parameters(), None)
        net = model
        if p is not None and (p.device.type != "cpu" or p.dtype != torch.float32):
            net = copy.deepcopy(model).to(device="cpu", dtype=torch.float32)
        with torch.no_grad():
            net(torch.zeros(1, channels, size, size))
    finally:
        for h in hooks:
            h.remove()
    return total


def default_pad(up: Upscaler) -> int:
    """Bicubic: its support (exact). A network: its receptive field, at most MAX_DEFAULT_PAD.
    A final resize (--outscale) adds its own support."""
    inner = up.core
    resize = math.ceil(2 / min(1.0, up.scale)) + 2
    if isinstance(inner, BicubicUpscaler):
        return resize
    net, spec = inner.model, inner.spec
    radius = MAX_DEFAULT_PAD
    if net is not None and spec is not None:
        try:
            radius = min(MAX_DEFAULT_PAD, math.ceil(receptive_radius(net, spec.channels)))
        except Exception:  # a network the probe cannot run: keep the cap
            radius = MAX_DEFAULT_PAD
        if spec.pre_upsample:
            radius += 2  # the bicubic pre-upsampling's support
    if inner is not up:
        radius += resize
    return radius


# ----------------------------------------------------------------------------------------------
# Memory: the tile side
# ----------------------------------------------------------------------------------------------

def dense_side_limit(up: Upscaler) -> int | None:
    """The longest padded tile side whose torch bicubic resizes (bicubic itself, a Y model's
    chroma, VDSR's pre-upsampling, --outscale) stay dense matrix products, as on the small
    probes; past it `imresize` gathers taps at several times the bytes a pixel (a 2048 px
    bicubic tile: 157 B/px measured, 81 planned from the probes: an RGBA picture's alpha took
    --max-memory 2G to 2.6 GB). None where no resize runs in torch."""
    inner = up.core
    spec = inner.spec
    chroma = isinstance(inner, ModelUpscaler) and spec.input == "y"  # not a Y plane alone (video)
    resizes = (isinstance(inner, BicubicUpscaler) or inner is not up or chroma
               or (spec is not None and spec.pre_upsample))
    if not resizes:
        return None
    return math.isqrt(int(DENSE_LIMIT / max(1.0, up.scale, inner.scale)))


class MemoryPlanner:
    """Sizes tiles of one upscaler to a memory budget. `run_tile(tiles, maxval)` runs one batch of
    padded uint tiles NxHxWxC through the upscaler (what the probes measure); `pad` is the tiles'
    overlap; `jobs` images share the budget."""

    def __init__(self, run_tile: Callable[[np.ndarray, float], torch.Tensor], device: torch.device,
                 geometry: TileGeometry, pad: int, *, max_memory: int | None = None, jobs: int = 1,
                 side_limit: int | None = None):
        self.run_tile, self.device, self.geometry, self.pad = run_tile, device, geometry, pad
        self.max_memory, self.jobs = max_memory, jobs
        # under --max-memory, padded tiles no longer than this (`dense_side_limit`): the probes'
        # bytes per pixel hold only up to it
        self.side_limit = side_limit if max_memory is not None else None
        self._bpp: dict[tuple, float] = {}
        self._lock = threading.Lock()  # images of several jobs may ask at once: measure once

    def bytes_per_pixel(self, channels: int, dtype: np.dtype) -> float:
        """Working memory per input pixel of one tile, measured on probe tiles: the storage of the
        tensors alive at once, or the growth of resident (or CUDA) memory from a small probe to a
        larger one, so one-time start-up allocations do not count as per-pixel."""
        key = (channels, np.dtype(dtype).str)
        with self._lock:
            if key in self._bpp:
                return self._bpp[key]
            small = self.geometry.round_up(PROBE_SMALL)  # two different sides, even where the
            sides = (small, self.geometry.round_up(max(PROBE, small + 1)))  # geometry's step is large
            # one run first, untracked: what a runtime does once (compiling; exporting a graph,
            # which torch traces and the tracker's dispatch mode would see) is no tile's memory
            self.run_tile(np.zeros((1, small, small, channels), dtype), float(np.iinfo(dtype).max))
            (px0, _, _), (px1, tracked, grown) = [self._measure(s, channels, dtype) for s in sides]
            bpp = max(tracked / px1, grown / (px1 - px0))
            self._bpp[key] = bpp
            return bpp

    def _measure(self, side: int, channels: int, dtype: np.dtype) -> tuple[int, int, int]:
        """(pixels, tracked tensor bytes, grown process or CUDA bytes) of one side x side probe."""
        probe = np.random.default_rng(0).integers(0, 255, (1, side, side, channels)).astype(dtype)
        tracker = tensor_tracker()

        def go():
            with tracker:
                y = self.run_tile(probe, float(np.iinfo(dtype).max))
                del y

        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            go()
            grown = torch.cuda.max_memory_allocated(self.device) - base
        else:
            # free heap pages handed back first: a runtime's buffers that reuse them (what decoding
            # the image freed) grow no resident memory, and the probe saw 126 B/px where a tile
            # takes 650 (espcn-x3 in OpenVINO; 16-bit 2000x1500 under --max-memory 600M: 788 MB)
            return_free_heap()
            grown = _peak_rss_of(go)
        return side * side, tracker.peak + probe.nbytes, grown

    def budget(self, reserved: int = 0) -> int:
        """Bytes the tiles of one job may use now (`reserved`: what the caller will still
        allocate on the CPU)."""
        cpu = self.device.type == "cpu"
        if self.max_memory is not None:
            if cpu:
                release_unheld()
            budget = self.max_memory - (resident_bytes() if cpu else torch.cuda.memory_allocated(self.device))
        else:
            budget = free_memory(self.device) // 2
        return budget // self.jobs - (reserved if cpu else 0)

    def tile_side(self, h: int, w: int, channels: int, dtype: np.dtype, reserved: int = 0,
                  batch: int = 1) -> int:
        """The tile side that fits `batch` h x w images in the budget (0: in one piece)."""
        if h * w * batch <= PROBE_SMALL ** 2:  # no larger than the first probe would be: whole,
            return 0                           # without the probes' runs (seconds for a deep net)
        # measured first: what the probes leave resident (a runtime's compiled graph, its
        # buffers) is no longer the budget's
        bpp = self.bytes_per_pixel(channels, dtype) * MEMORY_SAFETY * batch
        budget = self.budget(reserved)
        limit = self.side_limit
        if bpp * h * w <= budget and (limit is None or max(h, w) <= limit):
            return 0
        side = math.isqrt(max(0, int(budget / bpp))) - 2 * self.pad
        if limit is not None:
            side = min(side, max(MIN_TILE, limit - 2 * self.pad))
        if side < MIN_TILE:
            need = bpp * (MIN_TILE + 2 * self.pad) ** 2
            least = self._least_memory(need, reserved)  # what the smallest tile would run in
            if budget <= 0 and self.max_memory is not None and self.device.type == "cpu":
                given = f"{self.max_memory / 1e6:.0f} MB" if self.max_memory >= 1e6 else f"{self.max_memory:,} bytes"
                raise UserError(f"--max-memory {given}: this process (the model, "
                                f"its runtime, the libraries) already uses {resident_bytes() / 1e6:.0f} MB and this "
                                f"image's output {reserved / 1e6:.0f} MB more; raise it{least}")
            if self.max_memory is None:  # the budget was half the free memory: no option to raise
                raise UserError(f"half the free memory leaves too little for even a {MIN_TILE}px tile "
                                f"({budget / 1e6:.1f} MB for tiles, about {need / 1e6:.1f} MB needed): "
                                f"free some memory, or give --tile to size tiles yourself")
            raise UserError(f"--max-memory leaves too little for even a {MIN_TILE}px tile "
                            f"({budget / 1e6:.1f} MB for tiles, about {need / 1e6:.1f} MB "
                            f"needed): raise it{least}, or lower --tile-pad")
        return self.geometry.round_down(min(side, max(h, w)))

    def _least_memory(self, need: float, reserved: int) -> str:
        """", to at least N MB": the --max-memory that would give each job a `need`-byte tile
        beside what the process holds and `reserved`; "" without a CPU budget to name."""
        if self.max_memory is None or self.device.type != "cpu":
            return ""
        least = resident_bytes() + self.jobs * (reserved + need)
        return f" to at least {math.ceil(least / 1e6 / 50) * 50:.0f} MB"

    def batches_that_fit(self, shape: tuple, dtype: np.dtype, sizes: tuple[int, ...]) -> list[int]:
        """Those of `sizes` (tiles per call) whose padded tiles of `shape` (N, H, W, C) fit in
        the budget now; always 1."""
        n, h, w, c = shape
        tile_bytes = self.bytes_per_pixel(c, dtype) * MEMORY_SAFETY * n * h * w
        budget = self.budget()
        return [b for b in sizes if b == 1 or b * tile_bytes <= budget]
