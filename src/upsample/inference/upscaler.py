"""The one inference interface: `Upscaler`, called on float NCHW RGB in [0, 1].

`inference.load.load_upscaler(spec, scale=..., backend=..., device=...)` builds one from a spec
("bicubic", a registered model name, a checkpoint path) and a runtime's `Runner`. Every upscaler
takes RGB and returns RGB, unclamped; callers clamp and quantize at the edges.

Y-channel models are wrapped: RGB -> YCbCr (BT.601, the coefficients of `metrics.rgb_to_y`, as
[0, 1] floats), the network on Y, Cb/Cr upscaled by `degrade.imresize`, back to RGB. Pre-upsampling
models (VDSR) get the Y bicubic-upscaled by `imresize` first. The network itself runs on one of the
backends: torch, onnxruntime or openvino (the latter two export it to ONNX on the fly, cached by a
hash of its weights under the cache folder), or auto (`runtime.auto`: the fastest correct runtime and
precision for the machine, with the colour and resize edges inside the runtime's graph); on the
other backends the colour and resize edges run in torch.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from ..data.degrade import imresize, imresize_any_cpu, output_size
from ..data.colour import rgb_to_ycbcr, ycbcr_to_rgb
from ..models.registry import ModelSpec
from ..runtime.cache import FUSED_MIN_SIDE
from ..runtime.runner import Runner


class Upscaler:
    """Callable RGB -> RGB upscaler with a fixed `scale`. Every attribute a caller reads is
    declared here, with the value a non-network upscaler (bicubic, a wrapper) has."""

    name: str = "upscaler"
    scale: float = 1.0
    device: torch.device = torch.device("cpu")
    backend: str = "torch"            # what was asked for (`--backend`)
    runtime: str = "torch"            # what runs the network ("openvino, fused edges", ...)
    precision: str = "fp32"           # its arithmetic: fp32, bf16, bf16-split, bf16-tail, bf16-body, fp16, int8
    model: nn.Module | None = None    # the torch network, where there is one
    spec: ModelSpec | None = None     # how the network is fed, where there is one
    inner: Upscaler | None = None     # the upscaler a wrapper (outscale, half) runs
    channel_agnostic: bool = False    # works on any number of planes alike (e.g. bicubic)
    run_rgb: Callable[[torch.Tensor], torch.Tensor] | None = None  # RGB -> RGB in one graph
    graph: tuple[Path, str] | None = None  # that OpenVINO graph and precision: `fastpath` reruns it
    from_file: bool = False           # the weights came from a file (a plan can stamp it)
    eight_bit: bool = False           # a uint8 graph: 16-bit pictures keep 8 bits of their levels
    parallel: Callable | None = None  # the runner's network for several threads (`Runner.parallel`)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def output_shape(self, h: int, w: int) -> tuple[int, int]:
        return output_size(h, self.scale), output_size(w, self.scale)

    @property
    def core(self) -> Upscaler:
        """The upscaler whose network (or bicubic) does the work: a wrapper's inner one, else this."""
        return self.inner if self.inner is not None else self


class BicubicUpscaler(Upscaler):
    """MATLAB-style bicubic interpolation: the reference every model is compared with."""

    channel_agnostic = True

    def __init__(self, scale: float, device: str | torch.device = "cpu"):
        self.name, self.scale, self.device = "bicubic", float(scale), torch.device(device)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return imresize_any_cpu(x, self.scale)  # the torch-free `fastpath.BicubicEngine`'s bytes


class ModelUpscaler(Upscaler):
    """A network (through `run_net`, any backend) wrapped to the RGB -> RGB contract."""

    def __init__(self, model: nn.Module | None, run_net: Callable[[torch.Tensor], torch.Tensor], *,
                 scale: float, name: str, backend: str, device: torch.device, spec=None):
        # model None: a network that exists only in a runtime's file (an int8 model)
        self.model, self.run_net = model, run_net
        self.spec = spec if spec is not None else model.upsample_spec
        self.scale, self.name, self.backend, self.device = float(scale), name, backend, device
        self.runtime = backend

    @classmethod
    def from_runner(cls, runner: Runner, *, scale: float, name: str, backend: str,
                    device: torch.device) -> ModelUpscaler:
        up = cls(runner.model, runner.run, scale=scale, name=name, backend=backend, device=device,
                 spec=runner.spec)
        up.runtime, up.precision = runner.runtime, str(runner.precision)
        up.run_rgb, up.graph, up.parallel = runner.run_rgb, runner.graph, runner.parallel
        up.eight_bit = runner.eight_bit
        return up

    def side_by_side(self) -> tuple[ModelUpscaler, int]:
        """A twin of this upscaler whose network serves several threads at once, and how many
        threads keep it busy; (itself, 1) where its runtime has no such form."""
        if self.parallel is None:
            return self, 1
        run, threads = self.parallel()
        twin = copy.copy(self)
        twin.run_net, twin.run_rgb, twin.parallel = run, None, None
        return twin, threads

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, torch.float32)
        if self.run_rgb is not None and min(x.shape[-2:]) >= FUSED_MIN_SIDE:  # one graph, edges fused (auto)
            return self.run_rgb(x)
        if self.spec.input == "y" or self.spec.pre_upsample:  # resizes in torch: on the caller's threads
            with callers_threads():
                return self._edges_in_torch(x)
        return self.run_network(x)

    def _edges_in_torch(self, x: torch.Tensor) -> torch.Tensor:
        """The colour and resize edges in torch around the network (Y models, pre-upsampling)."""
        ycc = None
        if self.spec.input == "y":
            ycc = rgb_to_ycbcr(x)
            x = ycc[:, :1]
        if self.spec.pre_upsample:
            x = imresize(x, self.scale)
        out = self.run_network(x)
        if ycc is not None:
            chroma = imresize(ycc[:, 1:], self.scale, size=tuple(out.shape[-2:]))
            out = ycbcr_to_rgb(torch.cat([out, chroma], 1))
        return out

    def run_network(self, x: torch.Tensor) -> torch.Tensor:
        """Pad H, W up to the network's multiple (mirror, as Real-ESRGAN), run, crop back."""
        m = self.spec.pad_multiple
        h, w = x.shape[-2:]
        ph, pw = -h % m, -w % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if ph < h and pw < w else "replicate")
        out = self.run_net(x)
        if ph or pw:
            s = self.spec.scale or 1
            out = out[..., :h * s, :w * s]
        return out


def torch_does_glue_only(up: Upscaler) -> bool:
    """Whether `up` runs its network outside torch on the CPU (OpenVINO, onnxruntime) and leaves
    torch element-wise glue alone (conversions, clamps, padding): the fused RGB graph of `auto`
    (a picture too thin for it takes the torch edges, on the caller's threads: `callers_threads`),
    or an RGB network without pre-upsampling. A wrapper (--outscale's resize) or the int8
    network's torch colour edges are not."""
    if not isinstance(up, ModelUpscaler) or up.device.type != "cpu":
        return False
    if not str(up.runtime).startswith(("openvino", "onnxruntime")):
        return False
    return up.run_rgb is not None or (up.spec.input != "y" and not up.spec.pre_upsample)


_glue = threading.local()  # this thread's torch threads to give back, while it is in `glue_threads`
_inside_lock = threading.Lock()
_inside = {"threads": 0, "callers": 1}  # threads in `glue_threads`; torch's count before the first


@contextlib.contextmanager
def glue_threads(up: Upscaler):
    """One torch thread in this block where `torch_does_glue_only(up)`: torch's OpenMP threads
    spin after each small op and took the cores from the runtime's own threads, and these from
    torch's next op (espcn-x3 on 64x64 images, 2 cores: 34 ms a call instead of 5). Element-wise
    ops give the same bits on any number of threads; resizes do not always (imresize of 7x3000 by
    1.5 changed a last bit), so they go back to the caller's (`callers_threads`).
    torch.set_num_threads also sets the count a thread takes when it first runs torch: a thread
    that started while another was in here took 1 and gave 1 back for good (`--jobs 2` wrote
    other alpha bits). So the count before the first thread came in is what every thread in
    here gives back and resizes with, and it is torch's again once the last one leaves."""
    if not torch_does_glue_only(up) or getattr(_glue, "threads", None) is not None:  # nested: as set
        yield
        return
    with _inside_lock:
        if _inside["threads"] == 0:
            _inside["callers"] = torch.get_num_threads()
        _inside["threads"] += 1
        _glue.threads = _inside["callers"]
        torch.set_num_threads(1)
    try:
        yield
    finally:
        with _inside_lock:
            _inside["threads"] -= 1
            torch.set_num_threads(_glue.threads)
            _glue.threads = None


@contextlib.contextmanager
def callers_threads():
    """Inside `glue_threads`, the caller's torch threads again: for resizes (matrix products,
    whose last bits can depend on the number of threads), e.g. a picture too thin for the fused
    graph. Elsewhere nothing changes."""
    threads = getattr(_glue, "threads", None)
    if threads is None:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(1)
