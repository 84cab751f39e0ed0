"""`upsample quantize`: static int8 post-training quantization for ONNX Runtime or OpenVINO.

The float network is exported to ONNX as for the runtime backends, then quantized with the
runtime's own tool: ONNX Runtime's `quantize_static` (QDQ format, per-channel int8 weights,
uint8 activations, 99.999th-percentile ranges) or OpenVINO's NNCF (`nncf.quantize`). Calibration inputs are the network's
real inputs: centre crops of the `--calib` images, downscaled with the project's bicubic and fed
through the same Upscaler edges as inference (Y channel, VDSR's pre-upsampling), so the ranges
are those the network will see. The int8 file keeps the model's name, architecture and scale in
its metadata: `upsample eval|image|video --model OUT --backend <that backend>` run it, and
`upsample bench --model MODEL --int8 OUT` times it beside the fp32 model.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..runtime import export
from ..errors import UserError
from ..media.imageio import list_images, read_rgb
from ..runtime.int8 import SUFFIX, write_meta



def calibration_inputs(model, scale: float, folder: str, *, samples: int, size: int) -> list[np.ndarray]:
    """Network inputs (float32 NCHW) made from centre crops of up to `samples` images."""
    from ..data.degrade import make_lr, modcrop
    from ..inference.upscaler import ModelUpscaler

    images, _ = list_images(folder)
    if not images:
        raise UserError(f"--calib {folder}: no images found")
    seen: list[np.ndarray] = []

    def record(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.detach().cpu().float().numpy())
        return model(x)

    up = ModelUpscaler(model, record, scale=scale, name="calibration", backend="torch",
                       device=torch.device("cpu"))
    hr_size = int(round(size * scale))
    for path in images:  # one centre crop per image big enough: equal shapes for histograms
        hr = read_rgb(path)
        if min(hr.shape[:2]) < hr_size:
            continue
        top, left = (hr.shape[0] - hr_size) // 2, (hr.shape[1] - hr_size) // 2
        with torch.no_grad():
            up(make_lr(modcrop(hr[top:top + hr_size, left:left + hr_size], scale), scale))
        if len(seen) == samples:
            break
    if not seen:
        raise UserError(f"--calib {folder}: no image is at least {hr_size}x{hr_size} (--size {size} "
                        f"at x{scale:g}); use smaller --size")
    return seen


def edge_convs(onnx_path: Path) -> list[str]:
    """Names of the first and last Conv nodes: SR nets are most sensitive there (the input image
    and the residual / sub-pixel output), and they are a small share of the compute."""
    import onnx
    convs = [n.name for n in onnx.load(str(onnx_path)).graph.node if n.op_type == "Conv"]
    return sorted({convs[0], convs[-1]}) if convs else []


def quantize_onnxruntime(onnx_path: Path, out: Path, inputs: list[np.ndarray],
                         keep_float: list[str] = ()) -> None:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(inputs)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"input": x}

    pre = onnx_path.with_name("pre.onnx")
    quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=list(keep_float),
                    # 99.999th-percentile ranges: min/max ranges are stretched by rare outliers
                    # (VDSR Set5 x2: -0.12 dB with MinMax, -0.08 with percentile)
                    calibrate_method=CalibrationMethod.Percentile)


def quantize_openvino(onnx_path: Path, out: Path, inputs: list[np.ndarray],
                      keep_float: list[str] = ()) -> None:
    import nncf
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    names = {op.get_friendly_name() for op in model.get_ops()}
    # OpenVINO splits a Conv into "<name>/WithoutBiases" + an Add named <name>
    ignored = nncf.IgnoredScope(names=sorted(n for n in names for k in keep_float
                                             if n == k or n.startswith(k + "/")))
    q = nncf.quantize(model, nncf.Dataset(inputs), subset_size=len(inputs), ignored_scope=ignored)
    ov.save_model(q, str(out), compress_to_fp16=False)


def run(args: argparse.Namespace) -> int:
    from ..inference.load import model_scale, resolve_model

    out = Path(args.output)
    if out.suffix.lower() != SUFFIX[args.backend]:
        raise UserError(f"-o must end in {SUFFIX[args.backend]} for --backend {args.backend}, got {out.name}")
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it")
    if args.samples < 1 or args.size < 8:
        raise UserError("--samples must be >= 1 and --size >= 8")
    model, name = resolve_model(args.model)
    if model.upsample_spec.kind != "generator":
        raise UserError(f"{name} is a {model.upsample_spec.kind}, not an upscaler")
    scale = model_scale(model.upsample_spec, args.scale, name)
    inputs = calibration_inputs(model, scale, args.calib, samples=args.samples, size=args.size)
    spec = model.upsample_spec
    meta = {"arch": spec.arch, "kwargs": spec.kwargs, "name": spec.name or "", "source": str(args.model),
            "float_edges": args.keep_edges,
            "calibration": {"folder": str(args.calib), "images": len(inputs), "lr_size": args.size,
                            "scale": scale}}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".quantize-") as tmp:
        tmp = Path(tmp)
        onnx_path = tmp / "fp32.onnx"
        onnx_path.write_bytes(export.onnx_bytes(model.cpu().eval(), export.example_input(model, False)))
        q = tmp / ("int8" + SUFFIX[args.backend])
        print(f"calibrating on {len(inputs)} crops of {args.calib} ({args.backend})", file=sys.stderr)
        try:
            keep = edge_convs(onnx_path) if args.keep_edges else []
            (quantize_onnxruntime if args.backend == "onnxruntime" else quantize_openvino)(
                onnx_path, q, inputs, keep)
        except ImportError as exc:
            raise UserError(f"--backend {args.backend} needs {exc.name}: pip install "
                            f"{'nncf' if args.backend == 'openvino' else 'onnxruntime'}") from None
        write_meta(q, args.backend, meta)
        if args.backend == "openvino":  # weights first, the .xml (what loads) last
            q.with_suffix(".bin").replace(out.with_suffix(".bin"))
        q.replace(out)
    print(f"wrote {out} ({export.file_size(out) / 1e6:.2f} MB, int8 {args.backend}); run it with "
          f"`upsample eval --model {out} --backend {args.backend} ...`")
    return 0


def register(sub) -> None:
    p = sub.add_parser("quantize", help="static int8 quantization (ONNX Runtime QDQ or OpenVINO NNCF)",
                       description=__doc__.splitlines()[0])
    p.add_argument("model", help="a registered name (shipped weights) or a checkpoint")
    p.add_argument("--backend", required=True, choices=sorted(SUFFIX))
    p.add_argument("--calib", required=True, metavar="DIR", help="calibration images (training data, not benchmarks)")
    p.add_argument("-o", "--output", required=True, help="int8 model: .onnx (onnxruntime) or .xml (openvino)")
    p.add_argument("--scale", default=None, help="scale to calibrate at (VDSR; default: the model's)")
    p.add_argument("--samples", type=int, default=32, help="calibration images (one centre crop each)")
    p.add_argument("--size", type=int, default=64, help="LR crop size of each calibration sample")
    p.add_argument("--all-layers", dest="keep_edges", action="store_false",
                   help="quantize the first and last conv too (by default they stay float)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=run)
