"""`--backend auto`: the fastest correct way to run a model on this machine, chosen once per model.

CPU: the model runs in OpenVINO. For Y-channel models the whole RGB -> RGB pipeline (BT.601
YCbCr, MATLAB-exact bicubic of the chroma and of VDSR's input as fixed convolutions
(`degrade.BicubicUp`), the network, back to RGB) is one graph, so the runtime fuses the edges that
would otherwise cost more than the network; the Y network alone is a second graph (video works on
Y planes). Where the CPU has bf16 units, bf16 is used when its output stays within 1/255 of fp32
on a real image (the packaged sample), else bf16 for the body with the image-facing ends in fp32
(`fp32_ends`) when that stays within it, else fp32; the checks run once per weights and are
remembered.
CUDA: the network in fp16 (else bf16, else fp32: the same check) in channels_last, through
`torch.compile` when it works here.
int8: only when asked (`--precision int8`) and the model given is an `upsample quantize` output.

Everything exported is cached under `cache.cache_dir()` keyed by weights hash, graph and (in the
file names and OpenVINO's compiled-blob cache) precision; `upsample cache clear` empties it.
`--precision fp32` keeps the runtime and graph but not bf16/fp16 (what `eval` uses by default, so
that its numbers do not depend on the machine).
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import cache, export, fp32_ends
from .cache import FUSED_GRAPH
from ..media.imageio import atomic_write_bytes
from ..data.degrade import BicubicUp
from ..errors import UserError
from ..data.colour import YCC, YCC_INV, YCC_OFFSET, rgb_to_ycbcr
from ..inference.upscaler import ModelUpscaler

TOLERANCE = 1.0 / 255.0  # largest difference from fp32 that a half precision may make
PROBE = Path(__file__).resolve().parents[1] / "assets" / "probe.png"
NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


class FusedRGB(nn.Module):
    """RGB -> RGB for a Y-channel network at an integer scale, the same computation as
    `ModelUpscaler.__call__` (to float rounding) in one exportable graph, arranged so that the
    colour work costs a few convolutions: with YCbCr = M rgb + o and a = M^-1[:, 0],
        out = M^-1 ([Y_net; up(CbCr)] - o) = up(M^-1[:, 1:] M[1:] rgb - a o_0) + a Y_net,
    because bicubic upscaling is linear and keeps constants. So the chroma path is one
    convolution on the LR RGB (`BicubicUp` with the colour map folded in), the Y input one 1x1
    convolution (or, for VDSR, a `BicubicUp` with the map folded in), and the end a multiply-add;
    element-wise colour maths on full-size planes (10-15 ms each at 1080p here) is gone."""

    def __init__(self, net: nn.Module, scale: int):
        super().__init__()
        self.net, self.pre_upsample = net, net.upsample_spec.pre_upsample
        m, o, minv = YCC, YCC_OFFSET, YCC_INV
        a = minv[:, 0]
        if self.pre_upsample:
            self.to_y = BicubicUp(scale, mix=m[:1], bias=o[:1])
        else:
            self.to_y = nn.Conv2d(3, 1, 1)
            with torch.no_grad():
                self.to_y.weight.copy_(torch.from_numpy(m[:1]).view(1, 3, 1, 1))
                self.to_y.bias.copy_(torch.from_numpy(o[:1]))
            self.to_y.requires_grad_(False)
        self.chroma = BicubicUp(scale, mix=minv[:, 1:] @ m[1:], bias=-a * o[0])
        assert np.ptp(a) < 1e-9  # BT.601: R, G and B all take 255/219 of Y
        self.a = float(a[0])  # a scalar: a one-channel multiply before the broadcast add

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.chroma(x) + self.net(self.to_y(x)) * self.a


def can_fuse(model: nn.Module, scale: float) -> bool:
    spec = model.upsample_spec
    return spec.input == "y" and spec.pad_multiple == 1 and float(scale).is_integer() and scale >= 1


def probe_image(channels: int = 3, side: int = 96) -> torch.Tensor:
    """A crop of the packaged sample photo-like image as float NCHW RGB in [0, 1]."""
    from PIL import Image
    with Image.open(PROBE) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    h, w = arr.shape[:2]
    y, x = max(0, (h - side) // 2), max(0, (w - side) // 2)
    t = torch.from_numpy(np.ascontiguousarray(arr[y:y + side, x:x + side])).permute(2, 0, 1)[None]
    return t if channels == 3 else rgb_to_ycbcr(t)[:, :1]


def _checks_path(key: str) -> Path:
    return cache.cache_dir() / f"{key}.checks.json"


def remembered_check(key: str, what: str, measure) -> tuple[float, bool]:
    """(the value of `what` for the weights `key` - a difference from fp32, or which variant ran
    fastest -, whether `measure()` made it now): read from the cache, else measured and stored."""
    path = _checks_path(key)
    try:
        done = json.loads(path.read_text())
    except (OSError, ValueError):
        done = {}
    fresh = what not in done
    if fresh:
        done[what] = float(measure())
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, json.dumps(done, indent=1).encode())
        except OSError:
            pass  # an unwritable cache only costs the check next time
    return done[what], fresh


def _say(msg: str) -> None:
    print(f"auto: {msg}", file=sys.stderr)


def cpu_upscaler(model: nn.Module, *, name: str, scale: float, precision: str = "auto",
                 threads: int | None = None, quiet: bool = False) -> ModelUpscaler:
    """OpenVINO, bf16 where it holds (see the module docstring), the edges fused for Y models."""
    from .hardware import cpu_has_bf16
    if precision == "fp16":
        raise UserError("--precision fp16 is for CUDA; on the CPU use bf16 (or auto)")
    key = f"{model.upsample_spec.arch}-{export.weights_hash(model)}"
    net_xml = export.cached_ir(model, key=key)  # the key already holds the weights hash
    fused = FusedRGB(model, int(scale)) if can_fuse(model, scale) else None
    fused_xml = export.cached_ir(fused, key=f"{key}-{FUSED_GRAPH}-x{int(scale)}", example=torch.rand(1, 3, 16, 16)) \
        if fused is not None else None
    main_xml = fused_xml or net_xml
    use = "f32"  # or bf16 (every layer), or bf16-body (fp32 ends: see `fp32_ends`)
    if precision == "bf16":  # asked for: no check
        if not cpu_has_bf16():
            raise UserError("--precision bf16: this CPU has no bf16 units; use fp32 or auto")
        use = "bf16"
    elif precision == "auto" and cpu_has_bf16():
        probe, ref = probe_image(3 if fused is not None else model.upsample_spec.channels), []

        def measure(xml):
            if not ref:
                ref.append(np.asarray(cache.ov_compiled(main_xml, "f32", threads)(probe.numpy())[0]))
            got = np.asarray(cache.ov_compiled(xml, "bf16", threads)(probe.numpy())[0])
            return np.abs(got - ref[0]).max()
        graph = f"-{FUSED_GRAPH}" if fused is not None else ""
        said = []
        for option in ("bf16", "bf16-body"):  # fastest first
            xml = main_xml if option == "bf16" else fp32_ends.variant(main_xml)
            diff, fresh = remembered_check(key, f"openvino-{option}-x{scale:g}{graph}", lambda: measure(xml))
            if fresh:
                said.append(f"{option} differs from fp32 by {diff * 255:.2f}/255")
            if diff <= TOLERANCE:
                use = option
                break
        if said and not quiet:
            _say(f"{name} on the probe: {'; '.join(said)}; using {'fp32' if use == 'f32' else use}")
    if use == "bf16-body":
        net_xml, main_xml = fp32_ends.variant(net_xml), fp32_ends.variant(main_xml)
        fused_xml = main_xml if fused_xml is not None else None
    ov_precision = "f32" if use == "f32" else "bf16"
    cpu = torch.device("cpu")
    compiled = {}

    def run_net(t: torch.Tensor) -> torch.Tensor:  # compiled when first used (video's Y planes)
        if "net" not in compiled:
            compiled["net"] = export.file_session(net_xml, "openvino", cpu, precision=ov_precision,
                                                  threads=threads)
        return compiled["net"](t)

    up = ModelUpscaler(model, run_net, scale=scale, name=name, backend="auto", device=cpu)
    up.precision, up.runtime = ("fp32" if use == "f32" else use), "openvino"
    if fused_xml is not None:
        # The fused graph is the faster one wherever it was timed (640x360, OpenVINO fp32, 2
        # threads: espcn-x3 120 vs 183 ms with the edges in torch, vdsr x3 12.8 vs 13.5 s).
        fused_run = export.file_session(fused_xml, "openvino", cpu, precision=ov_precision, threads=threads)
        up.run_rgb, up.runtime = fused_run, "openvino, fused edges"
    up.graph = (main_xml, ov_precision)  # what `fastpath` reruns
    return up


def cuda_upscaler(model: nn.Module, *, name: str, scale: float, device: torch.device,
                  precision: str = "auto", compile: bool = True, quiet: bool = False) -> ModelUpscaler:
    """The network in fp16/bf16 (checked against fp32), channels_last, torch.compile."""
    model = model.to(device).eval()
    key = f"{model.upsample_spec.arch}-{export.weights_hash(model)}"
    if device.type == "cuda":  # frames and tiles repeat their sizes: let cuDNN pick its kernels
        torch.backends.cudnn.benchmark = True
    options = {"auto": [torch.float16, torch.bfloat16], "fp16": [torch.float16],
               "bf16": [torch.bfloat16], "fp32": []}[precision]
    x = probe_image(model.upsample_spec.channels).to(device)
    with torch.no_grad():
        ref = model(x)
    chosen, net = torch.float32, model
    for dtype in options:
        half = copy.deepcopy(model).to(dtype)
        half.upsample_spec = model.upsample_spec
        with torch.no_grad():
            diff, fresh = remembered_check(key, f"cuda-{NAMES[dtype]}",
                                           lambda: (half(x.to(dtype)).float() - ref).abs().max().item())
        if diff <= TOLERANCE or precision != "auto":
            chosen, net = dtype, half
            break
        if fresh and not quiet:
            _say(f"{name}: {NAMES[dtype]} differs from fp32 by {diff * 255:.2f}/255; not used")
    layout, fn = _fastest_layout(net, key, chosen, model.upsample_spec.channels, device, compile, quiet)

    def run_net(t: torch.Tensor) -> torch.Tensor:
        return fn(t.to(chosen).contiguous(memory_format=layout)).float()

    up = ModelUpscaler(net, run_net, scale=scale, name=name, backend="auto", device=device,
                       spec=model.upsample_spec)
    up.precision, up.runtime = NAMES[chosen], "torch.compile" if fn is not net else "torch"
    return up


def _fastest_layout(net: nn.Module, key: str, dtype: torch.dtype, channels: int, device: torch.device,
                    compile: bool, quiet: bool):
    """(memory format, callable): eager NCHW, eager channels_last or torch.compile'd
    channels_last, whichever ran a 256x256 input fastest here (timed once per weights and
    remembered). On an H100 compile + channels_last made VapSR's depth-wise convolutions 1.7x
    slower than eager fp16, and gained nothing on ESPCN, so it must earn its place."""
    from .hardware import time_runs
    x = torch.rand(1, channels, 256, 256, device=device, dtype=dtype)
    variants = {"eager": (torch.contiguous_format, lambda: net),
                "channels_last": (torch.channels_last, lambda: net)}
    if compile:
        variants["compile"] = (torch.channels_last, lambda: torch.compile(net, dynamic=None))
    built = {}

    def timed(name):
        fmt, make = variants[name]
        try:
            fn = built[name] = make()
            net.to(memory_format=fmt)
            with torch.no_grad():
                return time_runs(lambda: fn(x.contiguous(memory_format=fmt)), device, 2, 5)[0]
        except Exception as exc:  # no triton / C++ compiler here: the eager ones still work
            if not quiet:
                _say(f"{name} unavailable ({type(exc).__name__}: {exc})"[:200])
            return float("inf")

    def measure():
        times = {name: timed(name) for name in variants}
        return list(variants).index(min(times, key=times.get))

    idx, _ = remembered_check(key, f"cuda-{NAMES[dtype]}-layout", measure)
    name = list(variants)[int(idx)] if int(idx) < len(variants) else "eager"
    fmt, make = variants[name]
    net.to(memory_format=fmt)
    fn = built.get(name)  # (not `or`: a compiled module's truth value calls len())
    return fmt, fn if fn is not None else make()


# ------------------------------------------------------------------------- `upsample cache`

def cache_files() -> list[Path]:
    root = cache.cache_dir()
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []


def run_cache(args) -> int:
    import shutil
    root = cache.cache_dir()
    files = cache_files()
    size = sum(p.stat().st_size for p in files)
    if args.action == "info":
        print(f"{root}: {len(files)} files, {size / 1e6:.1f} MB (exports, OpenVINO compiled blobs, "
              "precision checks; set UPSAMPLE_CACHE to move it)")
        return 0
    if root.is_dir():
        shutil.rmtree(root)
    print(f"cleared {root} ({len(files)} files, {size / 1e6:.1f} MB)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("cache", help="the export cache of the auto and runtime backends: info or clear")
    p.add_argument("action", choices=["info", "clear"])
    p.set_defaults(func=run_cache)
