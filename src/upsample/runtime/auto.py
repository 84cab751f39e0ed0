"""`--backend auto`: the fastest way to run a model on this machine whose picture is as good as
fp32's, chosen once per model and returned as a `Runner` (`cpu_runner`, `cuda_runner`;
`inference.load` wraps it).

CPU: the model runs in OpenVINO. For Y-channel models the whole RGB -> RGB pipeline (BT.601 YCbCr,
MATLAB-exact bicubic of the chroma and of VDSR's input as fixed convolutions (`degrade.BicubicUp`),
the network, back to RGB) is one graph, so the runtime fuses the edges that would otherwise cost
more than the network; the Y network alone is a second graph (video works on Y planes), chosen by
the same gate on its own when first run. The candidates, fastest first: bf16 in every layer (for
the network alone also with its input split in two bf16 parts, `SplitInput`) and, for a dense model
with a cached int8 IR on a CPU with int8 dot-product units, that int8 network (`int8`), then bf16
with the network's last layer in fp32, then with both image-facing ends in fp32 (`fp32_ends`); the
first that passes the quality gate (`checks`: within 0.02 dB of fp32's Y-PSNR on the shipped probe
pictures, >= 50 dB from fp32's picture) is used, else fp32. The gate runs once per weights and is
remembered; its verdict is printed in words the first time (`upsample bench` prints it every time).
`--device GPU|NPU|AUTO` runs the same graphs on that OpenVINO device in its own precision (no gate:
the bf16 variants are the CPU's); a virtual device that can only pick the CPU (AUTO where OpenVINO
finds nothing else, AUTO:CPU, MULTI:CPU) comes here as "CPU" (`inference.load`), gated.
CUDA: the network in fp16 (else bf16, else fp32: the same gate) in channels_last, through
`torch.compile` when it works here.
int8 also when asked (`--precision int8`: the cached int8 IR, or an `upsample quantize` output).

Everything exported is cached under `cache.cache_dir()` keyed by weights hash, graph and (in the
file names and OpenVINO's compiled-blob cache) precision; `upsample cache clear` empties it.
`--precision fp32` keeps the runtime and graph but not bf16/fp16/int8 (what `eval` uses by
default, so that its numbers do not depend on the machine).
"""

from __future__ import annotations

import copy
import functools
import shutil
import sys
import threading
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from . import cache, export, fp32_ends, hardware, int8
from .cache import FUSED_GRAPH, PHASES_GRAPH, SPLIT_GRAPH
from ..data.degrade import BicubicUp
from ..errors import UserError
from ..media.cache import has_own_dir, own_dir
from ..data.colour import YCC, YCC_INV, YCC_OFFSET
from .checks import (DB_LIMIT, GATE, MIN_PSNR_VS_FP32, SPEED_MARGIN, checks_path, in_words, passes, probe_set,
                     quality, reference, remembered, remembered_check, speed_vs_fp32)
from .kinds import Backend, Precision
from .runner import Runner
from .sessions import file_session, ov_reason, parallel_session

NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


PHASE_LIMIT = 1e4  # far outside any picture's values (see `FusedRGB.forward`)


class FusedRGB(nn.Module):
    """RGB -> RGB for a Y-channel network at an integer scale, the same computation as
    `ModelUpscaler.__call__` (to float rounding) in one exportable graph, arranged so that the
    colour work costs a few convolutions: with YCbCr = M rgb + o and a = M^-1[:, 0],
        out = M^-1 ([Y_net; up(CbCr)] - o) = up(M^-1[:, 1:] M[1:] rgb - a o_0) + a Y_net,
    because bicubic upscaling is linear and keeps constants. So the chroma path is one
    convolution on the LR RGB (`BicubicUp` with the colour map folded in), the Y input one 1x1
    convolution (or, for VDSR, a `BicubicUp` with the map folded in), and the end a multiply-add;
    element-wise colour maths on full-size planes (10-15 ms each at 1080p here) is gone.

    A sub-pixel network (one with `phases`: its output before the pixel shuffle, as ESPCN) adds
    there instead, at low resolution: each colour's chroma phases plus the network's, then one
    pixel shuffle - no full-size add (ESPCN x3 at 640x360, OpenVINO bf16: 44 vs 54 ms, and
    0.016 dB from fp32 on the probes as before)."""

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
        self.scale = scale
        self.in_phases = hasattr(net, "phases") and getattr(net, "scale", None) == scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.in_phases:
            return self.chroma(x) + self.net(self.to_y(x)) * self.a
        # The clamp changes no value: it is an f32 step OpenVINO fuses into the last convolution,
        # which then writes f32 instead of rounding the picture's Y to bf16 (0.013 dB on the probes)
        y = (self.net.phases(self.to_y(x)) * self.a).clamp(-PHASE_LIMIT, PHASE_LIMIT)  # (N, s^2, H, W)
        rgb = self.chroma.phases(x).unflatten(1, (3, -1)) + y.unsqueeze(1)  # (N, 3, s^2, H, W)
        return torch.nn.functional.pixel_shuffle(rgb.flatten(1, 2), self.scale)


class ClampedPhases(nn.Module):
    """A sub-pixel network (one with `phases`) as its own graph, with `FusedRGB`'s no-op clamp
    before the pixel shuffle: without it OpenVINO rounds the last convolution's output - the
    picture - to bf16 (0.029 dB of ESPCN x3's Y-PSNR, simulated; 0.021 measured on the probes)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        phases = self.net.phases(x).clamp(-PHASE_LIMIT, PHASE_LIMIT)
        return torch.nn.functional.pixel_shuffle(phases, self.net.scale)


class SplitInput(nn.Module):
    """An image-facing convolution fed its input in two parts that bf16 holds exactly, hi =
    bf16(x) and lo = x - hi, with its weights twice: the same sum in fp32, and under bf16 the
    input is no longer rounded to 8 significant bits (OpenVINO computes the split in f32 from the
    graph's f32 input). That rounding cost espcn-x2's Y network 0.068 of its 0.085 dB (simulated);
    split, it measured +0.010 dB on the probes, in 76 ms at 640x360 where the fp32 ends took 86."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hi = x.to(torch.bfloat16).to(x.dtype)
        c = self.conv
        return torch.nn.functional.conv2d(torch.cat([hi, x - hi], 1), torch.cat([c.weight, c.weight], 1),
                                          c.bias, c.stride, c.padding, c.dilation)


def split_input(model: nn.Module) -> nn.Module | None:
    """A copy of `model` whose first convolution, where it takes the picture itself (the
    model's channels, zero padding, no groups), is a `SplitInput`; None elsewhere."""
    name, conv = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), ("", None))
    if conv is None or conv.in_channels != model.upsample_spec.channels or conv.groups != 1 \
            or conv.padding_mode != "zeros":
        return None
    twin = copy.deepcopy(model)
    parent, _, attr = name.rpartition(".")
    setattr(twin.get_submodule(parent) if parent else twin, attr, SplitInput(twin.get_submodule(name)))
    return twin


def network_graph(model: nn.Module, key: str) -> Path:
    """The IR of the network alone (video's Y planes; RGB models' only graph)."""
    if not hasattr(model, "phases"):
        return export.cached_ir(model, key=key)  # the key already holds the weights hash
    example = torch.rand(1, model.upsample_spec.channels, 16, 16)
    return export.cached_ir(ClampedPhases(model), key=f"{key}-{PHASES_GRAPH}", example=example)


def can_fuse(model: nn.Module, scale: float) -> bool:
    spec = model.upsample_spec
    return spec.input == "y" and spec.pad_multiple == 1 and float(scale).is_integer() and scale >= 1


def _say(msg: str) -> None:
    print(f"auto: {msg}", file=sys.stderr)


# The CPU graphs that run in OpenVINO's bf16 (some of their layers marked to stay fp32).
BF16_GRAPHS = ("bf16", "bf16-split", "bf16-tail", "bf16-body")

# What each graph is, in the words `auto` and `upsample bench` print.
LABELS = {"bf16": "bf16 in every layer", "bf16-body": "bf16 with the first and last layers in fp32",
          "bf16-tail": "bf16 with the last layer in fp32",
          "bf16-split": "bf16 with the input split in two bf16 parts",
          "int8": "int8 with the first and last layers float", "f32": "fp32 (exact)",
          "fp16": "fp16", "device": "the device's own precision"}


def cpu_runner(model: nn.Module, **options) -> Runner:
    """OpenVINO on `device` (CPU unless asked), the edges fused for Y models, on the CPU in the
    fastest graph that passes the quality gate (see the module docstring). A cache file removed
    under it (`upsample cache clear` in another process) is made again: built once more (runs
    waiting for each other's exports take long enough to meet more than one clear)."""
    for tries in range(CLEARS_MET):
        try:
            return _cpu_runner(model, **options)
        except (RuntimeError, OSError) as exc:
            if not cache.file_vanished(exc):
                raise  # a real error: said once, not after a second build
    raise UserError(f"the model's files in {cache.cache_dir()} were removed {CLEARS_MET} times while this run "
                    "made them (`upsample cache clear` in another process?); run again once it is done")


CLEARS_MET = 3  # `cpu_runner`'s builds before it gives up


def _cpu_runner(model: nn.Module, *, name: str, scale: float, precision: str = "auto",
                threads: int | None = None, quiet: bool = False, device: str = "CPU") -> Runner:
    if precision == Precision.FP16:
        raise UserError("--precision fp16 is for CUDA; on the CPU use " + (
            "bf16 (or auto)" if hardware.cpu_has_bf16() else "fp32 or auto (this CPU has no bf16 units)"))
    key = export.model_key(model)
    net_xml = network_graph(model, key)
    fused = FusedRGB(model, int(scale)) if can_fuse(model, scale) else None
    fused_xml = export.cached_ir(fused, key=f"{key}-{FUSED_GRAPH}-x{int(scale)}", example=torch.rand(1, 3, 16, 16)) \
        if fused is not None else None
    if device != "CPU":  # GPU / NPU / AUTO:GPU,CPU ...: no CPU bf16 variants to choose from
        use, chosen = "device", fused_xml or net_xml
    else:
        use, chosen = _cpu_choice(model, key, net_xml, fused_xml, name=name, scale=scale,
                                  precision=precision, threads=threads, quiet=quiet)
    if use == "int8":  # the int8 network with the colour edges in torch
        return Runner(run=file_session(chosen, Backend.OPENVINO, torch.device("cpu"), threads=threads),
                      spec=model.upsample_spec, runtime="openvino", model=model, precision=Precision.INT8)
    ov_precision = _ov_precision(use, precision)
    cpu, compiled = torch.device("cpu"), {}

    def session(xml, ov_precision=ov_precision):
        return file_session(xml, Backend.OPENVINO, cpu, precision=ov_precision, threads=threads,
                            ov_device=device)

    once = threading.RLock()  # first calls from several threads (video's workers, --jobs): one gate

    @functools.cache
    def net_graph() -> tuple[Path, str | None]:
        """The network alone's graph and precision: of a fused model, a graph of its own, gated
        on its own (Y probes) when first needed."""
        if fused_xml is None or device != "CPU":
            return (net_xml if fused_xml is not None else chosen), ov_precision
        net_use, net_file = _cpu_choice(model, key, net_xml, None, name=name, scale=scale,
                                        precision=precision, threads=threads, quiet=quiet,
                                        what=" (its Y network alone, as video runs it)")
        return net_file, _ov_precision(net_use, precision)

    def run_net(t: torch.Tensor) -> torch.Tensor:  # compiled when first used (video's Y planes)
        if "net" not in compiled:
            with once:
                if "net" not in compiled:
                    compiled["net"] = session(*net_graph())
        return compiled["net"](t)

    def parallel():
        with once:
            if "parallel" not in compiled:
                xml, ov_prec = net_graph()
                compiled["parallel"] = parallel_session(xml, precision=ov_prec, threads=threads, ov_device=device)
        return compiled["parallel"]

    runner = Runner(run=run_net, spec=model.upsample_spec, runtime="openvino" if device == "CPU" else f"openvino {device}",
                    model=model, precision="fp32" if ov_precision == "f32" else use,
                    graph=(chosen, ov_precision) if device == "CPU" else None, parallel=parallel)
    if fused_xml is not None:
        # The fused graph is the faster one wherever it was timed (640x360, OpenVINO fp32, 2
        # threads: espcn-x3 120 vs 183 ms with the edges in torch, vdsr x3 12.8 vs 13.5 s).
        runner.run_rgb = session(chosen)
        runner.runtime += ", fused edges"
    return runner


def _ov_precision(use: str, asked: str) -> str | None:
    """The OpenVINO inference precision a choice of `_cpu_choice` (or "device") runs in."""
    if use == "device":  # GPU / NPU / AUTO: fp32 when asked for (eval's default), else their own
        return "f32" if asked == Precision.FP32 else None
    return "bf16" if use in BF16_GRAPHS else "f32"  # int8: its float layers f32


def _check_name(option: str, scale: float, model: nn.Module, fused: bool, xml: Path) -> str:
    """The name a gate result is remembered under: the graph's version in it (the fused one's,
    or that of a sub-pixel network's own graph), and the int8 file's stamp (a new one is measured
    again)."""
    graph = FUSED_GRAPH if fused else PHASES_GRAPH if hasattr(model, "phases") else ""
    graph = f"-{graph}" if graph and option != "int8" else ""
    if option == "bf16-split":
        option = f"bf16-{SPLIT_GRAPH}"
    elif option in ("bf16-tail", "bf16-body"):  # the layers marked: fp32_ends' rule
        option = f"{option}{fp32_ends.VERSION}"
    if option == "int8":  # "timed": its speed is part of the check (on any CPU)
        st = xml.stat()
        option = f"int8-timed-{st.st_size}-{st.st_mtime_ns}"
    return f"openvino-{option}-x{scale:g}{graph}-{GATE}"


def _cpu_candidates(model: nn.Module, key: str, main_xml: Path, scale: float,
                    fused: bool) -> list[tuple[str, Path | Callable[[], Path | None]]]:
    """The graphs that may replace fp32 here, fastest first: where the CPU has bf16 units,
    all-bf16, for the network alone its graph with the input split (`SplitInput`: exported when
    first measured), bf16 with the last layer in fp32 and bf16 with fp32 ends (each only where
    it marks a layer), and after the all-bf16 ones the cached int8 IR of a dense model (on a Zen 5
    all-bf16 was the faster of the two on VDSR). int8 also has to run faster than fp32 here, as
    measured with its quality (`checks.speed_vs_fp32`): on an AVX2 CPU without int8 dot-product
    units OpenVINO's int8 VDSR still ran 2x fp32's speed."""
    found = []
    if hardware.cpu_has_bf16():
        found.append(("bf16", main_xml))
        if not fused:
            found.append(("bf16-split", lambda: split_graph(model, key)))
    cached = int8.find_cached(key, scale)
    if cached is not None and int8.is_dense(model):
        found.append(("int8", cached))
    if hardware.cpu_has_bf16():
        found += [(option, _variant(main_xml, tail=option == "bf16-tail")) for option in ("bf16-tail", "bf16-body")]
    return [(option, xml) for option, xml in found if option == "bf16" or xml != main_xml]


def _variant(main_xml: Path, tail: bool) -> Path:
    """`fp32_ends.variant`, made again where the cached one is damaged (truncated, garbage), and
    where the cache folder cannot take it (read-only, full) from a copy of `main_xml` in this
    process's own folder (`media.cache.own_dir`): a candidate dropped would pin a slower graph."""
    try:
        out = fp32_ends.variant(main_xml, tail=tail)
        if out != main_xml and not cache.readable_ir(out):
            out.unlink()
            out = fp32_ends.variant(main_xml, tail=tail)
        return out
    except FileNotFoundError:
        raise  # its graph removed meanwhile (`upsample cache clear`): `cpu_runner` builds again
    except OSError:
        if main_xml.parent == has_own_dir("export"):
            raise
    own = own_dir("export") / main_xml.name
    for suffix in (".bin", ".xml"):
        shutil.copyfile(main_xml.with_suffix(suffix), own.with_suffix(suffix))
    out = fp32_ends.variant(own, tail=tail)
    return main_xml if out == own else out


def split_graph(model: nn.Module, key: str) -> Path | None:
    """The network alone with its input split (`SplitInput`), None where it has no such input."""
    split = split_input(model)
    return network_graph(split, f"{key}-{SPLIT_GRAPH}") if split is not None else None


def _cpu_choice(model: nn.Module, key: str, net_xml: Path, fused_xml: Path | None, *, name: str,
                scale: float, precision: str, threads: int | None, quiet: bool,
                what: str = "") -> tuple[str, Path]:
    """(which graph, its file): "f32", "bf16" (every layer), "bf16-tail" (the last layer in
    fp32), "bf16-body" (fp32 ends; both `fp32_ends`) or "int8" - the first candidate that passes
    the gate on the probe set."""
    main_xml = fused_xml or net_xml
    if precision == Precision.BF16:  # asked for: no check
        if not hardware.cpu_has_bf16():
            raise UserError("--precision bf16: this CPU has no bf16 units; use fp32 or auto")
        return "bf16", main_xml
    if precision == Precision.INT8:
        cached = int8.find_cached(key, scale)
        if cached is None:  # (a VDSR's bench needs the scale too)
            at = f" --scale {scale:g}" if getattr(model.upsample_spec, "scale", None) is None else ""
            raise UserError(f"--precision int8: no int8 model of {name} x{scale:g} in the cache; make it "
                            f"once with `upsample bench --model {name}{at} --calib DIR` (training images), or "
                            "pass an `upsample quantize` output as --model")
        return "int8", cached
    if precision != Precision.AUTO:
        return "f32", main_xml
    # runs started together (a job array, GNU parallel) gate once: the others wait, then read its verdicts
    with export.building(f"{key}-x{scale:g}-gate"):  # (another scale of a VDSR gates apart)
        return _gated_choice(model, key, net_xml, fused_xml, name=name, scale=scale, threads=threads,
                             quiet=quiet, what=what)


def _gated_choice(model: nn.Module, key: str, net_xml: Path, fused_xml: Path | None, *, name: str,
                  scale: float, threads: int | None, quiet: bool, what: str) -> tuple[str, Path]:
    """`_cpu_choice` for --precision auto: the first candidate that passes the remembered gate."""
    main_xml = fused_xml or net_xml
    gate, results, use, said = _Gate(model, scale, net_xml, fused_xml, threads), {}, ("f32", main_xml), False
    for option, xml in _cpu_candidates(model, key, main_xml, scale, fused_xml is not None):
        xml = xml() if callable(xml) else xml
        if xml is None:
            continue
        result, fresh = remembered_check(key, _check_name(option, scale, model, fused_xml is not None, xml),
                                         lambda: gate.measure(option, xml))
        results[option], said = result, said or fresh
        if passes(result):
            use = (option, xml)
            break
    if said and not quiet:
        _say(decision_in_words(name, scale, use[0], results, what))
    return use


class _Gate:
    """The probe set as the inputs of one kind of graph (the fused RGB one, or the network alone
    for int8), the fp32 graph's results on it and that graph, made when first needed."""

    def __init__(self, model: nn.Module, scale: float, net_xml: Path, fused_xml: Path | None,
                 threads: int | None):
        self.spec, self.scale, self.threads = model.upsample_spec, scale, threads
        self.net_xml, self.fused_xml, self.made = net_xml, fused_xml, {}

    def _run(self, xml: Path, precision: str):
        compiled = cache.ov_compiled(xml, precision, self.threads)
        return lambda x: compiled(x.numpy())[0]

    def _probes(self, on_net: bool):
        if on_net not in self.made:
            xml = self.net_xml if on_net or self.fused_xml is None else self.fused_xml
            whole = xml == self.fused_xml
            probes = probe_set(self.scale, channels=3 if whole else self.spec.channels,
                               pre_upsample=self.spec.pre_upsample and not whole,
                               pad_multiple=self.spec.pad_multiple)
            fp32 = self._run(xml, "f32")
            self.made[on_net] = probes, reference(fp32, probes), fp32
        return self.made[on_net]

    def measure(self, option: str, xml: Path) -> dict:
        probes, ref, fp32 = self._probes(option == "int8")
        # int8 keeps its float layers in f32; the bf16 graphs ask for bf16
        if option != "int8":
            return quality(self._run(xml, "bf16"), probes, ref)
        try:  # a file of the user's (`quantize` copies it here): OpenVINO may refuse it, e.g. a fixed size
            run = self._run(xml, "f32")
            # no rule of int8 units: it is used where it is also clearly faster here
            return {**quality(run, probes, ref), **speed_vs_fp32(run, fp32, probes)}
        except RuntimeError as exc:  # OpenVINO's errors
            return {"error": ov_reason(exc, xml)}


def decision_in_words(name: str, scale: float, use: str, results: dict, what: str = "") -> str:
    """The gate's choice and what each graph it measured costs, for the terminal."""
    text = f"{name} x{scale:g}{what} runs {LABELS[use]}"
    if use in results:
        text += f" ({in_words(results[use])})"
    rejected = [f"{LABELS[o]} ({in_words(r)})" for o, r in results.items() if o != use]
    if rejected:
        text += (f"; not used (the limits are {DB_LIMIT:g} dB of PSNR and {MIN_PSNR_VS_FP32:g} dB from "
                 f"the fp32 picture, and int8 must take at most {SPEED_MARGIN:.0%} of fp32's time): "
                 + "; ".join(rejected))
    return text


def remembered_results(model: nn.Module, scale: float) -> dict:
    """The gate results remembered for `model` at `scale` on this CPU, by graph (nothing measured)."""
    key = export.model_key(model)
    done = remembered(checks_path(key))
    found, cached = {}, int8.find_cached(key, scale)
    for option in ("bf16", "bf16-split", "int8", "bf16-tail", "bf16-body"):
        if option == "int8" and cached is None:
            continue
        name = _check_name(option, scale, model, can_fuse(model, scale), cached or Path("-"))
        if isinstance(done.get(name), dict):
            found[option] = done[name]
    return found


def cuda_runner(model: nn.Module, *, name: str, device: torch.device, precision: str = "auto",
                compile: bool = True, quiet: bool = False) -> Runner:
    """The network in fp16/bf16 where it passes the quality gate, channels_last, torch.compile."""
    model = model.to(device).eval()
    spec = model.upsample_spec
    key = f"{spec.arch}-{export.weights_hash(model)}"
    if device.type == "cuda":  # frames and tiles repeat their sizes: let cuDNN pick its kernels
        torch.backends.cudnn.benchmark = True
    options = {"auto": [torch.float16, torch.bfloat16], "fp16": [torch.float16],
               "bf16": [torch.bfloat16], "fp32": []}[precision]
    scale = spec.scale or 2  # a pre-upsampling net is the same at every scale: probed at x2
    made, results, said = [], {}, False

    @functools.cache
    def probes():  # made only when a verdict is not remembered yet (fp32, asked-for or cached: never)
        return probe_set(scale, channels=spec.channels, pre_upsample=spec.pre_upsample,
                         pad_multiple=spec.pad_multiple)

    def fp32_ref():
        if not made:
            with torch.no_grad():
                made.append(reference(lambda x: model(x.to(device)).cpu(), probes()))
        return made[0]

    chosen, net = torch.float32, model
    for dtype in options:
        half = copy.deepcopy(model).to(dtype)
        half.upsample_spec = spec
        if precision != Precision.AUTO:  # asked for: no check
            chosen, net = dtype, half
            break
        with torch.no_grad():
            result, fresh = remembered_check(key, f"cuda-{NAMES[dtype]}-x{scale:g}-{GATE}", lambda: quality(
                lambda x: half(x.to(device, dtype)).float().cpu(), probes(), fp32_ref()))
        results[NAMES[dtype]], said = result, said or fresh
        if passes(result):
            chosen, net = dtype, half
            break
    if said and not quiet:
        _say(decision_in_words(name, scale, {"fp32": "f32"}.get(NAMES[chosen], NAMES[chosen]), results))
    layout, fn = _fastest_layout(net, key, chosen, spec.channels, device, compile, quiet)

    def run_net(t: torch.Tensor) -> torch.Tensor:
        return fn(t.to(chosen).contiguous(memory_format=layout)).float()

    return Runner(run=run_net, spec=spec, model=net, precision=NAMES[chosen],
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


