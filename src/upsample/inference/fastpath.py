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
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import numpy as np

from .. import __version__
from ..media.imageio import Planes, atomic_output
from ..models import WEIGHTS_DIR
from ..runtime.cache import FUSED_GRAPH, cache_dir, ov_compiled
from ..runtime.kinds import Backend, Precision

PLAN_VERSION = 3  # 2: auto may pick a bf16-body (fp32 ends) graph; 3: auto chooses by the PSNR gate
MAX_OUT_PIXELS = 2_000_000  # larger outputs take the full path (its memory-bounded tiling)


def _stamp(path: Path) -> list:
    st = path.stat()
    return [str(path), st.st_size, st.st_mtime_ns]


def _sources(model: str | None) -> list[Path]:
    """The files a model option resolves through: every shipped file (the default model is
    chosen from their eval JSONs) and a checkpoint given by path."""
    files = sorted(p for p in WEIGHTS_DIR.iterdir() if p.is_file()) if WEIGHTS_DIR.is_dir() else []
    if model is not None and Path(model).is_file():
        files.append(Path(model).resolve())
    return files


def plan_path(args) -> Path | None:
    """Where the plan for these `image` options lives; None where the fast path never applies."""
    if (args.backend != Backend.AUTO or str(args.device) != "cpu" or args.half or args.outscale is not None
            or args.tile is not None or args.max_memory is not None or args.precision == Precision.INT8):
        return None
    model = args.model
    if model is not None and Path(model).is_file():
        model = str(Path(model).resolve())
    ident = json.dumps([PLAN_VERSION, __version__, FUSED_GRAPH, model, args.scale, args.precision,
                        args.threads])
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
    try:
        plan = {"name": up.name, "scale": up.scale, "xml": str(xml), "precision": graph[1],
                "threads": args.threads,
                "stamps": [_stamp(p) for p in [*_sources(args.model), xml, xml.with_suffix(".bin")]]}
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
        self._compiled, self._lock = None, threading.Lock()

    @classmethod
    def load(cls, args) -> FastEngine | None:
        """The engine for these options, if a plan exists and every file it stamps is unchanged."""
        path = plan_path(args)
        try:
            plan = json.loads(path.read_text()) if path is not None else None
            if plan is None:
                return None
            expected = [_stamp(p) for p in _sources(args.model)]
            expected += [_stamp(Path(plan["xml"])), _stamp(Path(plan["xml"]).with_suffix(".bin"))]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return cls(plan) if plan.get("stamps") == expected else None

    def upscale_planes(self, planes: Planes, desc: str = "") -> Planes | None:
        c = planes.color
        s = int(self.scale)
        h, w = c.shape[:2]
        if planes.alpha is not None or c.shape[2] != 3 or h * w * s * s > MAX_OUT_PIXELS or min(h, w) < 3:
            return None
        maxval = np.float32(np.iinfo(c.dtype).max)
        # the same float32 steps as `tiler.Tiler` (divide, run, clamp, scale, round half to even)
        x = c.transpose(2, 0, 1)[None].astype(np.float32) / maxval
        try:
            with self._lock:
                if self._compiled is None:
                    self._compiled = ov_compiled(Path(self.plan["xml"]), self.plan["precision"],
                                                 self.plan["threads"])
                request = self._compiled.create_infer_request()
            y = np.asarray(request.infer({0: x})[0])
        except (RuntimeError, OSError, MemoryError):
            return None  # e.g. a damaged cache file: the full path rebuilds what it needs
        if y.shape != (1, 3, h * s, w * s):
            return None
        q = np.round(np.clip(y, 0, 1) * maxval).astype(c.dtype)
        return Planes(np.ascontiguousarray(q[0].transpose(1, 2, 0)), None, planes.info)
