"""`upsample quantize`: static int8 post-training quantization for ONNX Runtime or OpenVINO."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError
from .options import (add_max_pixels_option, add_output_option, add_overwrite_option, add_untrained_option,
                      check_scale_text, path_text, said_stopped)

# runtime.int8.SUFFIX by backend name (a test checks it), so that `quantize --help` needs no torch
SUFFIX = {"onnxruntime": ".onnx", "openvino": ".xml"}


def refuse_graph(model: str, command: str) -> None:
    """One line for an ONNX / OpenVINO file given as the model (the loader would call it "not a
    checkpoint"): these commands work on the PyTorch network the graph was exported from."""
    path = Path(model)
    if path.suffix.lower() in (".onnx", ".xml", ".bin") and path.is_file():
        raise UserError(f"{model} is an ONNX / OpenVINO graph; `upsample {command}` works on the PyTorch "
                        "model it was made from: give its registered name or checkpoint (.safetensors, .pth)")


def run(args: argparse.Namespace) -> int:
    from ..inference.load import check_trained, is_untrained, resolve_model, scale_of
    from ..runtime import export, quantize
    refuse_graph(args.model, "quantize")
    check_scale_text(args.scale)  # "--scale must be ...", not "scale must be ...", and before the model
    out = Path(args.output)
    if out.suffix.lower() != SUFFIX[args.backend]:
        raise UserError(f"-o must end in {SUFFIX[args.backend]} for --backend {args.backend}, got {args.output}")
    from ..inference.batch import check_writable
    from ..media.imageio import check_new_file
    check_new_file(out, overwrite=args.overwrite, inputs=[args.model],
                   companions=[out.with_suffix(".bin")] if args.backend == "openvino" else [])
    check_writable(out.parent, out)  # before calibration, not after it
    if args.samples < 1 or args.size < 8:
        raise UserError("--samples must be >= 1 and --size >= 8")
    check_trained(args.model, args.allow_untrained)
    untrained = is_untrained(args.model)
    model, name = resolve_model(args.model, args.scale)
    if model.upsample_spec.kind != "generator":
        raise UserError(f"{name} is a {model.upsample_spec.kind}, not an upscaler")
    scale = scale_of(model, args.scale, name)
    with said_stopped("quantize", out):
        quantize.quantize_model(model, scale=scale, backend=args.backend, calib=args.calib, out=out,
                                samples=args.samples, size=args.size, keep_edges=args.keep_edges,
                                source=str(args.model), untrained=untrained)
    # a multi-scale model's int8 file runs at a scale given (it was calibrated at this one)
    at = f" --scale {scale:g}" if model.upsample_spec.scale is None else ""
    print(f"wrote {out} ({export.file_size(out) / 1e6:.2f} MB, int8 {args.backend}); run it with "
          f"`upsample eval --model {out} --backend {args.backend}{at} ...`")
    if args.backend == "openvino" and args.keep_edges:  # what auto's int8 candidate is
        cached = quantize.copy_to_cache(model, scale, out)
        print(f"copied to {cached}: `--backend auto` lets it compete under the quality gate")
    return 0


def register(sub) -> None:
    p = sub.add_parser("quantize", help="static int8 quantization (ONNX Runtime QDQ or OpenVINO NNCF)",
                       description="Static int8 post-training quantization for ONNX Runtime or OpenVINO.")
    p.add_argument("model", type=path_text, help="a registered name (shipped weights) or a checkpoint")
    p.add_argument("--backend", required=True, choices=sorted(SUFFIX), help="the runtime the int8 model is for")
    p.add_argument("--calib", required=True, metavar="DIR", type=path_text,
                   help="calibration images (training data, not benchmarks)")
    add_output_option(p, help="int8 model: .onnx (onnxruntime) or .xml (openvino)")
    p.add_argument("--scale", default=None, help="scale to calibrate at (VDSR; default: the model's)")
    p.add_argument("--samples", type=int, default=32, help="calibration images (one centre crop each; default 32)")
    p.add_argument("--size", type=int, default=64, help="LR crop size of each calibration sample (default 64)")
    p.add_argument("--all-layers", dest="keep_edges", action="store_false",
                   help="quantize the first and last conv too (by default they stay float)")
    add_overwrite_option(p, help="replace an existing output (default: refuse)")
    add_untrained_option(p)
    add_max_pixels_option(p)
    p.set_defaults(func=run)
