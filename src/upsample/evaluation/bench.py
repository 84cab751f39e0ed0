"""`upsample bench`: speed of a model per backend, as figures that hold on any machine.

Per backend: milliseconds per frame (median of timed runs after warm-up), output megapixels per
second, achieved GFLOP/s (2 x the network's multiply-accumulates at that size, counted with
FlopCounterMode on the meta device: convolutions and matrix products), and that as a fraction of
this machine's peak measured in the same run (a large fp32 matmul; bf16 / fp16 where the hardware
has it). PyTorch eager fp32 is the reference row: every row gives its speed-up over it and the
largest absolute difference of its output from it. Another project's ONNX graph has no torch
module, so no reference row: its rows give speed alone, and the report says why.
"""

from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..errors import UserError
from ..runtime.hardware import cpu_has_bf16, cpu_name, openvino_peak_gflops, peak_gflops, sync
from ..inference.wrappers import half_upscaler
from ..runtime.int8 import BACKEND_OF
from ..runtime.kinds import BACKENDS, Backend, Precision
from ..inference.upscaler import BicubicUpscaler, Upscaler
from ..inference.memory import free_memory, tensor_tracker
from ..inference.load import check_scale, check_trained, check_device, load_upscaler, resolve_model, scale_of
from ..runtime import auto, int8 as int8_files, quantize
from ..runtime.foreign_onnx import is_foreign
from ..runtime.sessions import openvino_device


def parse_frame_size(text: str) -> tuple[int, int]:
    """(width, height) from "640x360"."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--size must be WIDTHxHEIGHT, e.g. 640x360; got {text!r}") from None
    if w <= 0 or h <= 0:
        raise UserError(f"--size must be positive, got {text!r}")
    return w, h


def check_frame_fits(size: tuple[int, int], scale: float, dev: torch.device, network_bytes: int = 0) -> None:
    """Refuse, before any allocation, a --size whose input and output frames (float32 RGB) and the
    network's activations (`network_bytes`, its peak at that size) exceed the memory free on `dev`:
    torch's allocator fails with a traceback, or the OS kills the process (or another one)."""
    w, h = size
    frames = 3 * 4 * w * h * (1 + scale * scale)
    free = free_memory(dev)
    if frames + network_bytes > free:
        what = "its frames" + (" and the network's activations" if network_bytes else "")
        raise UserError(f"--size {w}x{h}: {what} need {(frames + network_bytes) / 1e9:.1f} GB at x{scale:g}, "
                        f"more than the {free / 1e9:.1f} GB free; use a smaller --size (e.g. 1920x1080)")


def half_dtype(device: torch.device) -> torch.dtype | None:
    """The half type this device computes fast: fp16 on CUDA, bf16 on CPUs with bf16 units."""
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if cpu_has_bf16() else None


def _network_input(up: Upscaler, h: int, w: int) -> tuple[nn.Module, torch.Tensor]:
    """The upscaler's network on the meta device and its input for an h x w frame, as it gets it:
    upscaled first (pre-upsampling), padded to the multiple it takes."""
    spec = up.spec
    if spec.pre_upsample:
        h, w = round(h * up.scale), round(w * up.scale)
    m = spec.pad_multiple
    h, w = -(-h // m) * m, -(-w // m) * m
    meta = copy.deepcopy(up.model).to(device="meta", dtype=torch.float32)
    return meta, torch.zeros(1, spec.channels, h, w, device="meta")


def network_macs(up: Upscaler, h: int, w: int) -> int:
    """Multiply-accumulates of the upscaler's network for an h x w input frame (0 for bicubic)."""
    if up.model is None:
        return 0
    meta, x = _network_input(up, h, w)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta(x)
    return counter.get_total_flops() // 2


def network_peak_bytes(up: Upscaler, h: int, w: int) -> int:
    """The most bytes of float32 activations alive at once in the upscaler's network on an h x w
    input frame (0 for bicubic): what eager torch needs beyond the frames."""
    if up.model is None:
        return 0
    meta, x = _network_input(up, h, w)
    with tensor_tracker() as peak, torch.no_grad():
        meta(x)
    return peak.peak


def frame_from_image(path: str, size: tuple[int, int]) -> torch.Tensor:
    """A real picture as the input frame: `path` resized (MATLAB bicubic) to cover `size` and
    centre-cropped to it, float NCHW RGB in [0, 1]."""
    from ..data.degrade import imresize
    from ..media.imageio import read_rgb
    w, h = size
    img = torch.from_numpy(np.array(read_rgb(Path(path)))).permute(2, 0, 1)[None].float() / 255.0
    ih, iw = img.shape[-2:]
    f = max(h / ih, w / iw)
    if abs(f - 1) > 1e-9:
        img = imresize(img, f).clamp(0, 1)
    ih, iw = img.shape[-2:]
    y, x = (ih - h) // 2, (iw - w) // 2
    return img[..., y:y + h, x:x + w].contiguous()


def dtype_name(dtype: torch.dtype) -> str:
    """"bfloat16" for torch.bfloat16: the key of a peak in the report."""
    return str(dtype).replace("torch.", "")


def measure_peaks(dev: torch.device, hdt: torch.dtype | None, threads: int | None) -> dict:
    """Peak matmul GFLOP/s per dtype name: fp32, and the device's half type if it has one."""
    found = {"fp32": peak_gflops(dev, torch.float32)}
    if hdt is not None:
        found[dtype_name(hdt)] = peak_gflops(dev, hdt)
    if dev.type == "cpu":  # the faster of torch's and OpenVINO's matmul
        found["fp32"] = max(found["fp32"], openvino_peak_gflops("f32", threads))
        if hdt == torch.bfloat16:
            found["bfloat16"] = max(found["bfloat16"], openvino_peak_gflops("bf16", threads))
    return found


def half_torch_entry(model: str, *, scale, device: str, hdt: torch.dtype | None) -> tuple:
    """(label, upscaler, peak key) of the --half row: torch in the device's half type."""
    if hdt is None:
        raise UserError("--half: this CPU has no bf16 units (fp16/bf16 would be emulated)")
    up = half_upscaler(load_upscaler(model, allow_untrained=True, scale=scale, backend=Backend.TORCH, device=device))
    return f"torch {dtype_name(hdt)}", up, dtype_name(hdt)


def runtime_entry(model: str, backend: str, *, scale, device: str, precision: str,
                  threads: int | None) -> tuple:
    """(label, upscaler, peak key) of the row of a runtime other than torch, or of auto."""
    up = load_upscaler(model, allow_untrained=True, scale=scale, backend=backend, device=device,
                       precision=precision if backend == Backend.AUTO else Precision.AUTO,
                       threads=threads, quiet=True)
    if backend != Backend.AUTO:
        return f"{backend} fp32", up, "fp32"
    # what auto chose, e.g. "auto (openvino fp32)"; its peak is that of the dtype it runs in
    key = "bfloat16" if up.precision in auto.BF16_GRAPHS else \
        {Precision.FP16: "float16", Precision.FP32: "fp32"}.get(up.precision, up.precision)
    runtime = up.runtime if up.model is not None else up.runtime.split(",")[0]  # a graph's I/O left out
    return f"auto ({runtime} {up.precision})", up, key


def auto_choice(up: Upscaler) -> dict | None:
    """What `--backend auto`'s quality gate measured for this upscaler's weights on the CPU and
    which graph it took, in words and as numbers (None where it measured nothing)."""
    if up.model is None or up.device.type != "cpu" or getattr(up, "backend", None) != Backend.AUTO:
        return None
    results = auto.remembered_results(up.model, up.scale)
    use = {"fp32": "f32"}.get(up.precision, up.precision)
    if not results and use == "f32" and not cpu_has_bf16():  # nothing to gate: say why fp32
        why = "this CPU has no bf16 units, and " + (
            "no int8 network of it is in the cache (`--calib DIR` makes one)" if int8_files.is_dense(up.model)
            else "int8 is for dense models (no depth-wise convolutions)")
        return {"graph": auto.LABELS["f32"], "gate": {}, "in_words": f"{up.name} x{up.scale:g} runs fp32: {why}"}
    if not results:
        return None
    return {"graph": auto.LABELS.get(use, use), "gate": results,
            "in_words": auto.decision_in_words(up.name, up.scale, use, results)}


def make_cached_int8(model: str, scale, calib: str) -> None:
    """`--calib DIR`: the int8 model `--backend auto` lets compete, made once into the cache."""
    spec_model, name = resolve_model(model, scale)
    s = scale_of(spec_model, scale, name)
    if int8_files.find_cached(quantize.model_key(spec_model), s) is None:
        quantize.quantize_to_cache(spec_model, s, calib)


NO_REFERENCE = ("{model} is an ONNX graph with no torch model behind it: no torch eager fp32 row to "
                "compare with, so no speed-up or max|diff| (speed alone)")


def refuse_torch_only_options(model: str, *, half: bool, int8, calib: str | None) -> None:
    """Another project's ONNX graph (no torch module) has nothing for --half (torch in half
    precision), --calib (to quantize) or --int8 (a quantized twin to compare with)."""
    asked = [flag for flag, on in (("--half", half), ("--int8", bool(int8)), ("--calib", bool(calib))) if on]
    if asked:
        need, them = ("needs", "it") if len(asked) == 1 else ("need", "them")
        raise UserError(f"{model} is an ONNX graph with no torch model behind it, which {' and '.join(asked)} "
                        f"{need}: leave {them} out to time the graph")


def check_int8_files(paths, model: str) -> None:
    """The --int8 files checked before any model loads: `upsample quantize` outputs by their
    suffix (.onnx, .xml), and there. A picture or a checkpoint was read as a model and called
    "not a checkpoint (neither safetensors nor a PyTorch file)"."""
    net = "MODEL" if model == "bicubic" else model
    for path in paths:
        if Path(path).suffix.lower() not in BACKEND_OF:
            raise UserError(f"--int8 {path}: --int8 takes an int8 model written by `upsample quantize` "
                            f"({' or '.join(sorted(BACKEND_OF))}); make one with `upsample quantize {net} "
                            f"--backend openvino --calib DIR -o {Path(net).stem}-int8.xml`, or time a "
                            "checkpoint with --model")
        if not Path(path).is_file():
            raise UserError(f"--int8 {path}: no such file (an int8 model written by `upsample quantize`)")


def refuse_unused_options(model: str, *, backends: list[str], precision: str, half: bool) -> None:
    """Options that no row of this run would use, refused rather than left out of the figures
    unsaid: --precision sets the auto row alone; bicubic runs on torch in fp32 alone."""
    if precision not in (Precision.AUTO, Precision.FP32) and Backend.AUTO not in backends:
        raise UserError(f"--precision {precision} sets the graph of the auto row, and --backend "
                        f"{','.join(backends)} has none: add --backend auto (or leave --backend out: all)")
    if model != "bicubic":
        return
    if not {Backend.TORCH, Backend.AUTO} & set(backends):
        raise UserError("bicubic runs on the torch backend only (MATLAB's resize, no network to export): "
                        "use --backend torch")
    if half:
        raise UserError("--half times a network in half precision; bicubic has none: leave --half out")


def bench_entries(model: str, eager: Upscaler | None, *, backends: list[str], scale, device: str,
                  dev: torch.device, hdt: torch.dtype | None, half: bool, precision: str,
                  threads: int | None, int8) -> tuple[list[tuple], list[dict]]:
    """The rows to time, as (label, upscaler, peak key), eager fp32 first (none for another
    project's ONNX graph: `eager` None); and the rows of the runtimes that could not load, as
    {"backend", "error"}."""
    entries, failed = ([("torch eager fp32", eager, "fp32")] if eager is not None else []), []
    bicubic = isinstance(eager, BicubicUpscaler)  # plain torch: no runtime to export to, no half
    for backend in backends:
        if backend not in BACKENDS:
            raise UserError(f"unknown backend {backend!r}: use all or one of {', '.join(BACKENDS)}")
        if bicubic or (backend == Backend.TORCH and not half):
            continue  # the reference row is the torch backend in fp32
        if backend == Backend.TORCH:
            entries.append(half_torch_entry(model, scale=scale, device=device, hdt=hdt))
            continue
        try:  # a runtime missing here is a row saying why, not the end of the run
            entries.append(runtime_entry(model, backend, scale=scale, device=device,
                                         precision=precision, threads=threads))
        except UserError as exc:
            if str(exc).startswith("--precision"):  # asked for and impossible here: not a row
                raise
            failed.append({"backend": backend, "error": str(exc)})
    if half and dev.type == "cpu" and hdt is not None and not bicubic \
            and {Backend.AUTO, Backend.OPENVINO} & set(backends):  # what bf16 in OpenVINO would give
        up = load_upscaler(model, allow_untrained=True, scale=scale, backend=Backend.AUTO, precision=Precision.BF16,
                           threads=threads, quiet=True)
        entries.append((f"{up.runtime} bf16 (forced)", up, "bfloat16"))
    entries += [int8_entry(path, model, eager, device=device) for path in int8]
    return entries, failed


def int8_entry(path: str, model: str, eager: Upscaler, *, device: str) -> tuple:
    """(label, upscaler, peak key) of an `upsample quantize` output of `model`, on its own backend;
    refused where it is not one of this model (its speed-up and max|diff| would compare two models)."""
    if is_foreign(Path(path)):
        raise UserError(f"--int8 {path} is an ONNX graph, not an `upsample quantize` output: time it with "
                        f"`upsample bench --model {path}`, or quantize {model} with `upsample quantize`")
    if isinstance(eager, BicubicUpscaler):
        made_from = int8_files.read_meta(Path(path))[1].get("name") or "MODEL"
        raise UserError(f"--int8 {path}: bicubic has no network that an int8 model could be made from; time "
                        f"it beside its own model: `upsample bench --model {made_from} --int8 {path}`")
    backend = BACKEND_OF.get(Path(path).suffix.lower(), Backend.ONNXRUNTIME)  # load_upscaler checks it
    # a model of one scale: the file's own scale, so another scale's file is named as another model
    # below (not as a --scale the user never gave); a model of any scale (vdsr): the one timed
    up = load_upscaler(path, scale=eager.scale if eager.spec.scale is None else None, backend=backend,
                       device=device)
    if (up.spec.arch, up.spec.kwargs) != (eager.spec.arch, eager.spec.kwargs):
        made_from = int8_files.read_meta(Path(path))[1].get("name") or f"{up.spec.arch} {up.spec.kwargs}"
        raise UserError(f"--int8 {path} is a quantized {made_from}, not {model} ({eager.spec.arch} "
                        f"{eager.spec.kwargs}): quantize this model with `upsample quantize`")
    meta = int8_files.read_meta(Path(path))[1]
    made_from = meta.get("weights_sha256")
    if made_from and eager.model is not None and made_from != quantize.state_hash(eager.model):
        raise UserError(f"--int8 {path} was quantized from other weights of this architecture "
                        f"({meta.get('source') or meta.get('name') or 'unknown'}), not {model}'s: its max|diff| "
                        f"would compare two models; time it with `--model` of those weights, or quantize {model}")
    return f"{backend} int8", up, "int8"


SETTLE_S = 0.05  # the rest before each timed call (see `time_entries`)


def time_entries(entries: list[tuple], x: torch.Tensor, dev: torch.device, *, warmup: int,
                 runs: int, say) -> tuple[list[torch.Tensor], list[list[float]]]:
    """Each entry's output on `x` (float, clamped) and its `runs` timings in seconds."""
    # Timed in rounds - every row once per round, in turn - so that a slow spell of the machine
    # costs every row alike; each call starts after a short rest, as from an idle machine: the
    # previous row's threads (torch's OpenMP, OpenVINO's TBB) spin for a few ms after it ends,
    # which cost the next row 2-8 ms of espcn-x3's ~45 at 640x360 here.
    # The outputs compared are those of the first timed round: `--warmup 0` times a cold first
    # call, as it says, with no untimed call before it.
    outs, times = [None] * len(entries), [[] for _ in entries]
    with torch.no_grad():
        for label, up, _ in entries:
            if warmup:
                say(f"warming up {label}")
            for _ in range(warmup):
                up(x)
            sync(dev)
        for r in range(runs):
            say(f"round {r + 1} of {runs}")
            for i, (_, up, _) in enumerate(entries):
                time.sleep(SETTLE_S)
                t = time.perf_counter()
                out = up(x)
                sync(dev)
                times[i].append(time.perf_counter() - t)
                if r == 0:  # differences as the saved image shows them (a copy: a runtime may reuse its buffer)
                    outs[i] = out.float().clamp(0, 1)
    return outs, times


def timed_rows(entries: list[tuple], outs: list[torch.Tensor], times: list[list[float]], macs: int,
               peaks: dict, reference: bool = True) -> list[dict]:
    """One report row per timed entry: speed, GFLOP/s, share of peak, and (with a `reference`
    row first) speed-up over it and difference from it; None where there is none."""
    rows, first = [], statistics.median(times[0])
    for (label, _, key), out, ts in zip(entries, outs, times):
        sec = statistics.median(ts)
        oh, ow = out.shape[-2:]
        row = {"backend": label, "ms_per_frame": sec * 1e3, "mpix_per_s": oh * ow / sec / 1e6,
               "gflops": 2 * macs / sec / 1e9 if macs else None, "peak": key,
               "max_abs_diff": (out - outs[0]).abs().max().item() if reference else None,
               "speedup": first / sec if reference else None}
        row["of_peak"] = row["gflops"] / peaks[key] if macs and key in peaks else None
        rows.append(row)
    return rows


def bench(model: str, *, size: tuple[int, int] = (640, 360), backends: list[str] | None = None,
          device: str = "cpu", half: bool = False, warmup: int = 1, runs: int = 3,
          scale: float | None = None, int8: list[str] = (), log=None, image: str | None = None,
          precision: str = "auto", threads: int | None = None, allow_untrained: bool = False,
          calib: str | None = None) -> dict:
    """Benchmark `model` on each backend against PyTorch eager fp32 (see the module docstring).
    A registered model without trained weights is timed only with `allow_untrained`.
    `image`: measure on this picture (resized and cropped to `size`) instead of random pixels,
    so the differences are those a user sees. `calib`: make the cached int8 model that the auto
    row lets compete (once; see `runtime.int8`). `device` may be an OpenVINO device (GPU, NPU,
    AUTO): the runtime rows run there, the eager reference on the CPU."""
    if runs < 1:
        raise UserError(f"--runs must be >= 1, got {runs}")
    if warmup < 0:
        raise UserError(f"--warmup must be >= 0, got {warmup}")
    check_trained(model, allow_untrained)  # once: every row below loads the same model
    graph = is_foreign(Path(model))  # another project's ONNX graph: no torch reference row
    if graph:
        refuse_torch_only_options(model, half=half, int8=int8, calib=calib)
    elif Path(model).suffix.lower() in BACKEND_OF and Path(model).is_file():  # int8: no torch model either
        made_from = int8_files.read_meta(Path(model))[1].get("name") or "MODEL"
        raise UserError(f"{model} is an int8 file of `upsample quantize`: time it beside the model it was made "
                        f"from, `upsample bench --model {made_from} --int8 {model}`")
    check_int8_files(int8, model)
    backends = list(backends or BACKENDS)
    refuse_unused_options(model, backends=backends, precision=precision, half=half)
    torch_device = "cpu" if openvino_device(device) is not None else device
    dev = check_device(torch_device, Backend.TORCH)
    w, h = size
    say = log or (lambda msg: None)
    if threads:
        torch.set_num_threads(threads)
    hdt = half_dtype(dev)
    eager = None if graph else load_upscaler(model, allow_untrained=True, scale=scale, backend=Backend.TORCH,
                                             device=torch_device, threads=threads)
    if eager is None:  # a graph's scale is probed later: the one asked, else x4 assumed
        check_frame_fits(size, check_scale(scale or 4, "--scale"), dev)
    else:
        check_frame_fits(size, eager.scale, dev, network_peak_bytes(eager, h, w))
    x = (frame_from_image(image, size) if image else
         torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))).to(dev)
    if calib:
        make_cached_int8(model, scale, calib)
    macs = network_macs(eager, h, w) if eager is not None else 0
    entries, failed = bench_entries(model, eager, backends=backends, scale=scale, device=device,
                                    dev=dev, hdt=hdt, half=half, precision=precision,
                                    threads=threads, int8=int8)
    if not entries:  # a graph asked on torch alone, or on runtimes that all failed here
        raise UserError(failed[0]["error"] if failed else f"{model} is an ONNX graph, which the torch "
                        "backend cannot run: use --backend onnxruntime, openvino, auto or all")
    say(f"measuring peak: {2048}^3 matmul")  # after the rows are loaded: their errors come first
    peaks = measure_peaks(dev, hdt, threads)
    outs, times = time_entries(entries, x, dev, warmup=warmup, runs=runs, say=say)
    if runs > 1:  # best of two: the peak measured before the rows and after them
        peaks = {k: max(v, measure_peaks(dev, hdt, threads)[k]) for k, v in peaks.items()}
    timed = timed_rows(entries, outs, times, macs, peaks, reference=eager is not None)
    rows = timed + failed
    for row, (label, up, _) in zip(timed, entries):
        if label.startswith("auto ") and (choice := auto_choice(up)) is not None:
            row["choice"] = choice
    named = entries[0][1]
    report = {"model": named.name, "scale": named.scale, "size": f"{w}x{h}", "device": str(dev),
              "cpu": cpu_name(), "cpu_bf16": cpu_has_bf16(), "threads": torch.get_num_threads(),
              "warmup": warmup, "runs": runs,
              "gmacs_per_frame": macs / 1e9 if eager is not None else None,  # a graph's: not counted
              "peak_gflops": peaks, "rows": rows}
    if eager is None:
        report["note"] = NO_REFERENCE.format(model=model)
    return report


def format_report(r: dict) -> str:
    peaks = ", ".join(f"{k} {v:.0f}" for k, v in r["peak_gflops"].items())
    width = max([22] + [len(row["backend"]) for row in r["rows"]])  # e.g. "auto (openvino bf16-fp32-ends)"
    gmacs = "GMAC/frame not counted" if r["gmacs_per_frame"] is None else f"{r['gmacs_per_frame']:.2f} GMAC/frame"
    lines = [f"{r['model']} x{r['scale']:g} at {r['size']} on {r['device']} ({r['threads']} threads): "
             f"{gmacs}; peak GFLOP/s (matmul): {peaks}; "
             f"median of {r['runs']} after {r['warmup']} warm-up",
             f"{'backend':<{width}} {'ms/frame':>10} {'MP/s':>8} {'GFLOP/s':>8} {'of peak':>8} "
             f"{'vs eager':>8} {'max|diff|':>10}"]
    for row in r["rows"]:
        if "error" in row:
            lines.append(f"{row['backend']:<{width}} unavailable: {row['error']}")
            continue
        gf = f"{row['gflops']:.1f}" if row["gflops"] is not None else "-"
        pk = f"{100 * row['of_peak']:.1f}%" if row["of_peak"] is not None else "-"
        vs = f"{row['speedup']:.2f}x" if row["speedup"] is not None else "-"
        diff = f"{row['max_abs_diff']:.2e}" if row["max_abs_diff"] is not None else "-"
        lines.append(f"{row['backend']:<{width}} {row['ms_per_frame']:>10.1f} {row['mpix_per_s']:>8.3f} "
                     f"{gf:>8} {pk:>8} {vs:>8} {diff:>10}")
    lines += [f"auto: {row['choice']['in_words']}" for row in r["rows"] if "choice" in row]
    lines += [f"note: {r['note']}"] if r.get("note") else []
    return "\n".join(lines)
