"""`upsample bench`: speed of a model per backend, as figures that hold on any machine.

Per backend: milliseconds per frame (median of timed runs after warm-up), output megapixels per
second, achieved GFLOP/s (2 x the network's multiply-accumulates at that size, counted with
FlopCounterMode on the meta device: convolutions and matrix products), and that as a fraction of
this machine's peak measured in the same run (a large fp32 matmul; bf16 / fp16 where the hardware
has it). PyTorch eager fp32 is the reference row: every row gives its speed-up over it and the
largest absolute difference of its output from it.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from ..errors import UserError
from ..runtime.hardware import _sync, cpu_has_bf16, cpu_name, openvino_peak_gflops, peak_gflops
from ..inference.infer import half_upscaler
from ..runtime.kinds import BACKENDS, PRECISIONS
from ..inference.upscaler import BicubicUpscaler, Upscaler
from ..inference.load import check_device, load_upscaler


def parse_frame_size(text: str) -> tuple[int, int]:
    """(width, height) from "640x360"."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--size must be WIDTHxHEIGHT, e.g. 640x360; got {text!r}") from None
    if w <= 0 or h <= 0:
        raise UserError(f"--size must be positive, got {text!r}")
    return w, h


def half_dtype(device: torch.device) -> torch.dtype | None:
    """The half type this device computes fast: fp16 on CUDA, bf16 on CPUs with bf16 units."""
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if cpu_has_bf16() else None


def network_macs(up: Upscaler, h: int, w: int) -> int:
    """Multiply-accumulates of the upscaler's network for an h x w input frame (0 for bicubic)."""
    model = getattr(up, "model", None)
    if model is None:
        return 0
    spec = up.spec
    if spec.pre_upsample:
        h, w = round(h * up.scale), round(w * up.scale)
    meta = copy.deepcopy(model).to(device="meta", dtype=torch.float32)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta(torch.zeros(1, spec.channels, h, w, device="meta"))
    return counter.get_total_flops() // 2


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


def bench(model: str, *, size: tuple[int, int] = (640, 360), backends: list[str] | None = None,
          device: str = "cpu", half: bool = False, warmup: int = 1, runs: int = 3,
          scale: float | None = None, int8: list[str] = (), log=None, image: str | None = None,
          precision: str = "auto", threads: int | None = None) -> dict:
    """Benchmark `model` on each backend against PyTorch eager fp32 (see the module docstring).
    `image`: measure on this picture (resized and cropped to `size`) instead of random pixels,
    so the differences are those a user sees."""
    backends = list(backends or BACKENDS)
    dev = check_device(device, "torch")
    w, h = size
    say = log or (lambda msg: None)
    if threads:
        torch.set_num_threads(threads)
    say(f"measuring peak: {2048}^3 matmul")
    hdt = half_dtype(dev)

    def measure_peaks() -> dict:
        found = {"fp32": peak_gflops(dev, torch.float32)}
        if hdt is not None:
            found[str(hdt).replace("torch.", "")] = peak_gflops(dev, hdt)
        if dev.type == "cpu":  # the faster of torch's and OpenVINO's matmul
            found["fp32"] = max(found["fp32"], openvino_peak_gflops("f32", threads))
            if hdt == torch.bfloat16:
                found["bfloat16"] = max(found["bfloat16"], openvino_peak_gflops("bf16", threads))
        return found

    peaks = measure_peaks()
    x = (frame_from_image(image, size) if image else
         torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))).to(dev)

    entries = []  # (label, upscaler, peak key) of every row, eager fp32 first

    eager = load_upscaler(model, scale=scale, backend="torch", device=device, threads=threads)
    macs = network_macs(eager, h, w)
    entries.append(("torch eager fp32", eager, "fp32"))
    rows = []
    for backend in backends:
        if backend not in BACKENDS:
            raise UserError(f"unknown backend {backend!r}: use all or one of {', '.join(BACKENDS)}")
        if isinstance(eager, BicubicUpscaler):
            continue  # plain torch: no runtime to export to, nothing to run in half
        if backend == "torch" and not half:
            continue  # the reference row is the torch backend in fp32
        if backend == "torch":
            if hdt is None:
                raise UserError("--half: this CPU has no bf16 units (fp16/bf16 would be emulated)")
            up = half_upscaler(load_upscaler(model, scale=scale, backend="torch", device=device))
            label, key = f"torch {str(hdt).replace('torch.', '')}", str(hdt).replace("torch.", "")
        else:
            try:
                up = load_upscaler(model, scale=scale, backend=backend, device=device,
                                   precision=precision if backend == "auto" else "auto",
                                   threads=threads, quiet=True)
            except UserError as exc:
                rows.append({"backend": backend, "error": str(exc)})
                continue
            label, key = f"{backend} fp32", "fp32"
            if backend == "auto":  # what auto chose, e.g. "auto (openvino fp32)"
                label = f"auto ({up.runtime} {up.precision})"
                key = {"bf16": "bfloat16", "bf16-body": "bfloat16", "fp16": "float16"}.get(up.precision,
                                                                                   up.precision)
        entries.append((label, up, key))
    if half and dev.type == "cpu" and hdt is not None and not isinstance(eager, BicubicUpscaler) \
            and {"auto", "openvino"} & set(backends):  # what bf16 in OpenVINO would give
        up = load_upscaler(model, scale=scale, backend="auto", precision="bf16", threads=threads,
                           quiet=True)
        entries.append((f"{up.runtime} bf16 (forced)", up, "bfloat16"))
    for path in int8:  # `upsample quantize` outputs of this model, on their own backends
        from ..runtime.int8 import BACKEND_OF
        backend = BACKEND_OF.get(Path(path).suffix.lower(), "onnxruntime")  # load_upscaler checks it
        entries.append((f"{backend} int8",
                        load_upscaler(path, scale=eager.scale, backend=backend, device=device), "int8"))

    # Timed in rounds - every row once per round, in turn - so that a slow spell of the machine,
    # or threads still spinning after the previous row, costs every row alike.
    outs, times = [], [[] for _ in entries]
    with torch.no_grad():
        for label, up, _ in entries:
            say(f"warming up {label}")
            for _ in range(max(1, warmup)):
                out = up(x)
            _sync(dev)
            outs.append(out.float().clamp(0, 1))  # differences as the saved image shows them
        for r in range(runs):
            say(f"round {r + 1} of {runs}")
            for i, (_, up, _) in enumerate(entries):
                t = time.perf_counter()
                up(x)
                _sync(dev)
                times[i].append(time.perf_counter() - t)
    peaks = {k: max(v, measure_peaks()[k]) for k, v in peaks.items()} if runs > 1 else peaks  # best of two
    ref = outs[0]
    timed = []
    for (label, _, key), out, ts in zip(entries, outs, times):
        sec = statistics.median(ts)
        oh, ow = out.shape[-2:]
        row = {"backend": label, "ms_per_frame": sec * 1e3, "mpix_per_s": oh * ow / sec / 1e6,
               "gflops": 2 * macs / sec / 1e9 if macs else None, "peak": key,
               "max_abs_diff": (out - ref).abs().max().item()}
        row["of_peak"] = row["gflops"] / peaks[key] if macs and key in peaks else None
        timed.append(row)
    ref_row, rows = timed[0], timed + rows
    for row in rows:
        if "ms_per_frame" in row:
            row["speedup"] = ref_row["ms_per_frame"] / row["ms_per_frame"]
    return {"model": eager.name, "scale": eager.scale, "size": f"{w}x{h}", "device": str(dev),
            "cpu": cpu_name(), "cpu_bf16": cpu_has_bf16(), "threads": torch.get_num_threads(),
            "warmup": warmup, "runs": runs,
            "gmacs_per_frame": macs / 1e9, "peak_gflops": peaks, "rows": rows}


def format_report(r: dict) -> str:
    peaks = ", ".join(f"{k} {v:.0f}" for k, v in r["peak_gflops"].items())
    lines = [f"{r['model']} x{r['scale']:g} at {r['size']} on {r['device']} ({r['threads']} threads): "
             f"{r['gmacs_per_frame']:.2f} GMAC/frame; peak GFLOP/s (matmul): {peaks}; "
             f"median of {r['runs']} after {r['warmup']} warm-up",
             f"{'backend':<22} {'ms/frame':>10} {'MP/s':>8} {'GFLOP/s':>8} {'of peak':>8} "
             f"{'vs eager':>8} {'max|diff|':>10}"]
    for row in r["rows"]:
        if "error" in row:
            lines.append(f"{row['backend']:<22} unavailable: {row['error']}")
            continue
        gf = f"{row['gflops']:.1f}" if row["gflops"] is not None else "-"
        pk = f"{100 * row['of_peak']:.1f}%" if row["of_peak"] is not None else "-"
        lines.append(f"{row['backend']:<22} {row['ms_per_frame']:>10.1f} {row['mpix_per_s']:>8.3f} "
                     f"{gf:>8} {pk:>8} {row['speedup']:>7.2f}x {row['max_abs_diff']:>10.2e}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    size = parse_frame_size(args.size)
    if args.runs < 1 or args.warmup < 0:
        raise UserError("--runs must be >= 1 and --warmup >= 0")
    backends = list(BACKENDS) if args.backend == "all" else [args.backend]
    log = None if args.json else (lambda m: print(m, file=sys.stderr))
    report = bench(args.model, size=size, backends=backends, device=args.device, half=args.half,
                   warmup=args.warmup, runs=args.runs, scale=args.scale, int8=args.int8, log=log,
                   image=args.image, precision=args.precision, threads=args.threads)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def register(sub) -> None:
    p = sub.add_parser("bench", help="speed per backend: ms/frame, MP/s, GFLOP/s and share of peak")
    p.add_argument("--model", required=True, help="a registered name, a checkpoint, or bicubic")
    p.add_argument("--scale", default=None, help="scale (bicubic and VDSR need one)")
    p.add_argument("--size", default="640x360", help="input frame WIDTHxHEIGHT (e.g. 1920x1080)")
    p.add_argument("--backend", default="all", choices=["all", *BACKENDS])
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="precision of the auto row (auto: what `--backend auto` picks)")
    p.add_argument("--image", default=None, help="a picture to measure on (resized/cropped to --size)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--half", action="store_true", help="also torch in fp16 (CUDA) / bf16 (CPU)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    p.add_argument("--runs", type=int, default=3, help="timed runs (the median is reported)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--int8", action="append", default=[], metavar="FILE",
                   help="also time this `upsample quantize` output of the model (repeatable)")
    p.set_defaults(func=run)
