"""`--backend auto`: the fastest correct way to run a model on this machine, chosen once per model
and returned as a `Runner` (`cpu_runner`, `cuda_runner`; `inference.load` wraps it).

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
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import cache, export, fp32_ends, hardware
from .cache import FUSED_GRAPH
from ..data.degrade import BicubicUp
from ..errors import UserError
from ..data.colour import YCC, YCC_INV, YCC_OFFSET
from .checks import TOLERANCE, probe_image, remembered_check
from .kinds import Backend, Precision
from .runner import Runner
from .sessions import file_session

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


def _say(msg: str) -> None:
    print(f"auto: {msg}", file=sys.stderr)


def cpu_runner(model: nn.Module, *, name: str, scale: float, precision: str = "auto",
               threads: int | None = None, quiet: bool = False) -> Runner:
    """OpenVINO, bf16 where it holds (see the module docstring), the edges fused for Y models."""
    if precision == Precision.FP16:
        raise UserError("--precision fp16 is for CUDA; on the CPU use bf16 (or auto)")
    key = f"{model.upsample_spec.arch}-{export.weights_hash(model)}"
    net_xml = export.cached_ir(model, key=key)  # the key already holds the weights hash
    fused = FusedRGB(model, int(scale)) if can_fuse(model, scale) else None
    fused_xml = export.cached_ir(fused, key=f"{key}-{FUSED_GRAPH}-x{int(scale)}", example=torch.rand(1, 3, 16, 16)) \
        if fused is not None else None
    use = _cpu_precision(model, key, fused_xml or net_xml, fused is not None, name=name, scale=scale,
                         precision=precision, threads=threads, quiet=quiet)
    if use == "bf16-body":
        net_xml = fp32_ends.variant(net_xml)
        fused_xml = fp32_ends.variant(fused_xml) if fused_xml is not None else None
    ov_precision = "f32" if use == "f32" else "bf16"
    cpu, compiled = torch.device("cpu"), {}

    def run_net(t: torch.Tensor) -> torch.Tensor:  # compiled when first used (video's Y planes)
        if "net" not in compiled:
            compiled["net"] = file_session(net_xml, Backend.OPENVINO, cpu, precision=ov_precision,
                                           threads=threads)
        return compiled["net"](t)

    runner = Runner(run=run_net, spec=model.upsample_spec, runtime="openvino", model=model,
                    precision="fp32" if use == "f32" else use, graph=(fused_xml or net_xml, ov_precision))
    if fused_xml is not None:
        # The fused graph is the faster one wherever it was timed (640x360, OpenVINO fp32, 2
        # threads: espcn-x3 120 vs 183 ms with the edges in torch, vdsr x3 12.8 vs 13.5 s).
        runner.run_rgb = file_session(fused_xml, Backend.OPENVINO, cpu, precision=ov_precision, threads=threads)
        runner.runtime = "openvino, fused edges"
    return runner


def _cpu_precision(model: nn.Module, key: str, main_xml: Path, fused: bool, *, name: str, scale: float,
                   precision: str, threads: int | None, quiet: bool) -> str:
    """OpenVINO's precision for `main_xml`: "f32", "bf16" (every layer) or "bf16-body" (fp32 ends,
    see `fp32_ends`): the fastest whose output stays within TOLERANCE of fp32 on the probe."""
    if precision == Precision.BF16:  # asked for: no check
        if not hardware.cpu_has_bf16():
            raise UserError("--precision bf16: this CPU has no bf16 units; use fp32 or auto")
        return "bf16"
    if precision != Precision.AUTO or not hardware.cpu_has_bf16():
        return "f32"
    probe, ref = probe_image(3 if fused else model.upsample_spec.channels), []

    def measure(xml):
        if not ref:
            ref.append(np.asarray(cache.ov_compiled(main_xml, "f32", threads)(probe.numpy())[0]))
        got = np.asarray(cache.ov_compiled(xml, "bf16", threads)(probe.numpy())[0])
        return np.abs(got - ref[0]).max()
    graph = f"-{FUSED_GRAPH}" if fused else ""
    said, use = [], "f32"
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
    return use


def cuda_runner(model: nn.Module, *, name: str, device: torch.device, precision: str = "auto",
                compile: bool = True, quiet: bool = False) -> Runner:
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
        if diff <= TOLERANCE or precision != Precision.AUTO:
            chosen, net = dtype, half
            break
        if fresh and not quiet:
            _say(f"{name}: {NAMES[dtype]} differs from fp32 by {diff * 255:.2f}/255; not used")
    layout, fn = _fastest_layout(net, key, chosen, model.upsample_spec.channels, device, compile, quiet)

    def run_net(t: torch.Tensor) -> torch.Tensor:
        return fn(t.to(chosen).contiguous(memory_format=layout)).float()

    return Runner(run=run_net, spec=model.upsample_spec, model=net, precision=NAMES[chosen],
                  runtime="torch.compile" if fn is not net else "torch")


def _fastest_layout(net: nn.Module, key: str, dtype: torch.dtype, channels: int, device: torch.device,
                    compile: bool, quiet: bool):
    """(memory format, callable): eager NCHW, eager channels_last or torch.compile'd
    channels_last, whichever ran a 256x256 input fastest here (timed once per weights and
    remembered). On an H100 compile + channels_last made VapSR's depth-wise convolutions 1.7x
    slower than eager fp16, and gained nothing on ESPCN, so it must earn its place."""
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
                return hardware.time_runs(lambda: fn(x.contiguous(memory_format=fmt)), device, 2, 5)[0]
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


