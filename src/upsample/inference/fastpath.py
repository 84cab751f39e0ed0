"""The second `upsample image` call starts at once: a cache hit runs without importing torch.

`import torch` alone takes 1.5-2 s on the 2-core CPU, longer than OpenVINO needs to load a cached
compiled graph and upscale a photo. So when `image` runs with `--backend auto` on the CPU, the
full path (torch: resolve the model, export, check bf16, see `auto`) leaves a *plan* in the cache:
the one OpenVINO graph that maps RGB to RGB for these options (the fused graph of a Y model, or
the network of an RGB model), its precision and threads, and stamps (size, mtime) of the weights
it came from. The next call with the same options finds the plan, checks the stamps and runs
that graph directly on the image: the same graph, the same compile options and the same uint8
rounding as the full path, so the same output bytes.

The plan is only used where the full path runs the image in one piece: 8- or 16-bit RGB without
alpha, at most `MAX_OUT_PIXELS` out, no `--tile`/`--max-memory`/`--outscale`/`--half`. Anything
else (gray, alpha, larger images, a changed weights file, a newer package) takes the full path,
which also rewrites the plan. Torch-free: this module imports numpy, PIL and OpenVINO only.

`--model bicubic` needs no plan: `BicubicEngine` runs MATLAB's imresize in numpy
(`data.bicubic`) from the first call, on RGB, gray and alpha planes alike, 8 or 16 bits, up or
down: the full path's `BicubicUpscaler` runs the same numpy code on the CPU, so the bytes agree.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import numpy as np

from .. import __version__
from ..data.bicubic import imresize_array, output_size
from ..errors import UserError
from ..media.cache import has_own_dir
from ..media.imageio import Planes, atomic_output
from ..models import WEIGHTS_DIR
from ..runtime import fp32_ends
from ..runtime.cache import (FUSED_GRAPH, FUSED_MIN_SIDE, PHASES_GRAPH, SPLIT_GRAPH, cache_dir, ov_compiled,
                             per_thread)
from ..runtime.cpu import cpu_kind
from ..runtime.kinds import Backend, Precision
from .tiling import TileGeometry

PLAN_VERSION = 3  # 2: auto may pick a bf16-body (fp32 ends) graph; 3: auto chooses by the PSNR gate
MAX_OUT_PIXELS = 2_000_000  # larger outputs take the full path (its memory-bounded tiling)


def _stamp(path: Path, source: bool = False) -> list:
    """`path`, its size and mtime; for a weights file (`source`) also its inode and ctime, which
    a copy keeping the mtime (`cp -p`, `rsync -a`, `tar x`) of another checkpoint of the same size
    still changes (the graph files: not, their ctime moves when `fp32_ends` links them)."""
    st = path.stat()
    return [str(path), st.st_size, st.st_mtime_ns, *((st.st_ino, st.st_ctime_ns) if source else ())]


def _sources(model: str | None) -> list[Path]:
    """The files a model option resolves through: every shipped file (the default model is
    chosen from their eval JSONs) and a checkpoint given by path."""
    files = sorted(p for p in WEIGHTS_DIR.iterdir() if p.is_file()) if WEIGHTS_DIR.is_dir() else []
    if model is not None and Path(model).is_file():
        files.append(Path(model).resolve())
    return files


def _fast_options(args) -> bool:
    """Whether these `image` options are ones the full path runs whole images with on the CPU."""
    return not (args.backend != Backend.AUTO or str(args.device) != "cpu" or args.half
                or args.outscale is not None or args.tile is not None or args.max_memory is not None
                or args.precision == Precision.INT8)


def plan_path(args) -> Path | None:
    """Where the plan for these `image` options lives; None where the fast path never applies."""
    if not _fast_options(args):
        return None
    model = args.model
    if model is not None and Path(model).is_file():
        model = str(Path(model).resolve())
    graphs = [FUSED_GRAPH, PHASES_GRAPH, SPLIT_GRAPH, fp32_ends.VERSION]  # a new graph: a new plan
    ident = json.dumps([PLAN_VERSION, __version__, *graphs, model, args.scale, args.precision, args.threads,
                        cpu_kind()])  # a cache shared by machines: each one's gated choice
    return cache_dir() / "plans" / f"{hashlib.sha256(ident.encode()).hexdigest()[:24]}.json"


def remember(args, up) -> None:
    """After the full path built `up` (an `Upscaler`): write the plan if one graph does it all."""
    path, graph = plan_path(args), up.graph  # None for non-model upscalers
    if path is None or graph is None or not up.from_file:
        return  # not auto on the CPU, or an untrained model (nothing to stamp)
    spec = up.spec
    whole = up.run_rgb is not None or (spec.input == "rgb" and spec.pad_multiple == 1
                                       and not spec.pre_upsample)
    if not whole or not float(up.scale).is_integer():
        return
    xml = Path(graph[0])
    if xml.parent == has_own_dir("export"):
        return  # a graph in this run's temporary folder (an unwritable cache): gone when it exits
    try:
        plan = {"name": up.name, "scale": up.scale, "xml": str(xml), "precision": graph[1],
                "threads": args.threads,
                "stamps": [*(_stamp(p, source=True) for p in _sources(args.model)),
                           _stamp(xml), _stamp(xml.with_suffix(".bin"))]}
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as tmp:
            tmp.write_text(json.dumps(plan, indent=1))
    except OSError:
        pass  # an unwritable cache only costs the full path next time


class FastEngine:
    """Runs a plan's graph on whole RGB images; `upscale_planes` returns None for what it does
    not take (the caller then uses the full path)."""

    def __init__(self, plan: dict):
        self.plan, self.name, self.scale = plan, plan["name"], float(plan["scale"])
        self._run, self._lock = None, threading.Lock()

    @classmethod
    def load(cls, args) -> FastEngine | None:
        """The engine for these options, if a plan exists and every file it stamps is unchanged."""
        path = plan_path(args)
        try:
            plan = json.loads(path.read_text()) if path is not None else None
            if plan is None:
                return None
            expected = [_stamp(p, source=True) for p in _sources(args.model)]
            expected += [_stamp(Path(plan["xml"])), _stamp(Path(plan["xml"]).with_suffix(".bin"))]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return cls(plan) if plan.get("stamps") == expected else None

    def upscale_planes(self, planes: Planes, desc: str = "") -> Planes | None:
        c = planes.color
        s = int(self.scale)
        h, w = c.shape[:2]
        if planes.alpha is not None or c.shape[2] != 3 or h * w * s * s > MAX_OUT_PIXELS or min(h, w) < FUSED_MIN_SIDE:
            return None
        x = _to_float(c)[None]
        try:
            with self._lock:
                if self._run is None:  # one infer request a thread, kept: a new one per image from
                    # two threads (`--jobs 2`) hung for good in OpenVINO's input copy, 2 runs in 6
                    self._run = per_thread(ov_compiled(Path(self.plan["xml"]), self.plan["precision"],
                                                      self.plan["threads"]))
            y = np.asarray(self._run(x))
        except (RuntimeError, OSError, MemoryError):
            return None  # e.g. a damaged cache file: the full path rebuilds what it needs
        if y.shape != (1, 3, h * s, w * s):
            return None
        return Planes(_to_uint(y[0], c.dtype), None, planes.info)


# The same float32 steps as `tiler.Tiler`: divide by the dtype's maximum, run, clamp, scale back,
# round half to even; so an engine here writes the bytes the full path writes.
def _to_float(c: np.ndarray) -> np.ndarray:
    """HxWxC uint8/uint16 -> CxHxW float32 in [0, 1]."""
    return c.transpose(2, 0, 1).astype(np.float32) / np.float32(np.iinfo(c.dtype).max)


def _to_uint(y: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """CxHxW float -> HxWxC of `dtype`, clamped to its range."""
    maxval = np.float32(np.iinfo(dtype).max)
    q = np.round(np.clip(y, 0, 1) * maxval).astype(dtype)
    return np.ascontiguousarray(q.transpose(1, 2, 0))


class BicubicEngine:
    """`--model bicubic` without torch (see the module docstring); `upscale_planes` returns None
    for an image the full path would not run whole, which then takes it."""

    name = "bicubic"

    def __init__(self, scale: float):
        self.scale = scale

    @classmethod
    def load(cls, args) -> BicubicEngine | None:
        """The engine for these options, if they ask for bicubic upscaling on the CPU; None for
        anything else, including a scale the full path will refuse with its own message."""
        if args.model != "bicubic" or not _fast_options(args) or args.threads is not None:
            return None  # --threads: the full path sets torch's thread count; numpy's is its own
        try:
            scale = 2.0 if args.scale is None else float(args.scale)  # make_upscaler's default
        except ValueError:
            return None
        if not 0 < scale < float("inf"):
            return None
        try:  # a scale the full path's tiling refuses (not a ratio of small integers) is refused
            TileGeometry.of(scale)  # there, whatever the image size or --threads
        except UserError:
            return None
        return cls(scale)

    def upscale_planes(self, planes: Planes, desc: str = "") -> Planes | None:
        h, w = planes.color.shape[:2]
        if output_size(h, self.scale) * output_size(w, self.scale) > MAX_OUT_PIXELS:
            return None
        color, alpha = (None if p is None else _to_uint(imresize_array(_to_float(p), self.scale), p.dtype)
                        for p in (planes.color, planes.alpha))
        return Planes(color, alpha, planes.info)


def load(args) -> BicubicEngine | FastEngine | None:
    """The torch-free engine for these `image` options, if there is one."""
    return BicubicEngine.load(args) or FastEngine.load(args)
