"""`upsample export`: a model as ONNX or OpenVINO IR, with a parity check against PyTorch."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import UserError
from .options import add_output_option, add_overwrite_option, add_untrained_option, check_scale_text, path_text

FORMATS = ("onnx", "openvino")  # runtime.export.FORMATS, SUFFIX_OF (a test checks them): no torch for --help
SUFFIX_OF = {"onnx": ".onnx", "openvino": ".xml"}


GRAPH_SUFFIXES = (".onnx", ".xml")  # already exported graphs: nothing of a network's to export


def check_not_a_graph(model: str) -> None:
    """An .onnx / OpenVINO .xml given as the model is one line saying what to do with it (it was
    "not a checkpoint (neither safetensors nor a PyTorch file)")."""
    path = Path(model)
    if path.suffix.lower() not in GRAPH_SUFFIXES or not path.is_file():
        return
    use = (f"run it as it is with --model {model} --backend onnxruntime|openvino" if path.suffix.lower() == ".onnx"
           else "load it with OpenVINO itself (--model takes the .onnx export, `--format onnx`)")
    raise UserError(f"{model} is already an exported graph, not a checkpoint: {use}; "
                    "export takes a model name or a checkpoint")


def check_weights_file_is_not_the_input(out: Path, fmt: str, model: str) -> None:
    """An IR's .bin beside `out` must not be the model read (a PyTorch `pytorch_model.bin`-style
    checkpoint, exported with -o of the same stem): --overwrite replaced the checkpoint by IR weights."""
    weights = out.with_suffix(".bin")
    if fmt == "openvino" and Path(model).is_file() and weights.exists() and weights.samefile(model):
        raise UserError(f"-o {out} would write its weights to {weights}, the checkpoint being exported "
                        "(inputs are never replaced); name another output, e.g. "
                        f"-o {out.with_name(out.stem + '-ir.xml')}")


def check_output_suffix(output: str | None, fmt: str) -> None:
    """-o names a file of --format's kind; a .xml (.onnx) without --format openvino (onnx) says
    which --format writes it."""
    if output is None or Path(output).suffix.lower() == SUFFIX_OF[fmt]:
        return
    other = [f for f, suffix in SUFFIX_OF.items() if suffix == Path(output).suffix.lower()]
    hint = f": add --format {other[0]}" if other else f": name a {SUFFIX_OF[fmt]} file"
    # the name as given: the name alone was "not null" for /dev/null, "not " for .
    raise UserError(f"--format {fmt} writes a {SUFFIX_OF[fmt]} file, not {output}{hint}")


def check_output(out: Path, args: argparse.Namespace) -> None:
    """`out` is new (or --overwrite), not the checkpoint read, and can be written."""
    from ..inference.batch import check_writable
    from ..media.imageio import check_new_file
    check_weights_file_is_not_the_input(out, args.format, args.model)
    check_new_file(out, overwrite=args.overwrite, inputs=[args.model],
                   companions=[out.with_suffix(".bin")] if args.format == "openvino" else [])
    check_writable(out.parent, out)  # one clear line, not a temporary file's OSError after the export


def run(args: argparse.Namespace) -> int:
    check_not_a_graph(args.model)
    check_scale_text(args.scale)
    if args.output:  # its checks before torch and the model load (an existing -o was refused after)
        check_output_suffix(args.output, args.format)
        check_output(Path(args.output), args)
    from ..inference.load import check_trained, is_untrained, model_scale, resolve_model, scale_of
    from ..runtime import export
    check_trained(args.model, args.allow_untrained)
    model, name = resolve_model(args.model, args.scale)
    spec = model.upsample_spec
    if spec.kind != "generator":
        raise UserError(f"{name} is a {spec.kind}: only upscalers are exported")
    scale = None
    if args.uint8_io:
        scale = scale_of(model, args.scale, name)
    elif args.scale is not None:
        model_scale(model.upsample_spec, args.scale, name)  # only checks that it matches
    if args.output:
        out = Path(args.output)
    else:
        out = export.default_output(name, spec, scale, args.format, fp16=args.fp16, uint8_io=args.uint8_io)
        check_output(out, args)
    from .options import said_stopped
    with said_stopped("export", out):  # Ctrl-C / SIGTERM: what was kept, how to go on
        diff = export.export_model(model, args.format, out, fp16=args.fp16, uint8_io=args.uint8_io,
                                   scale=scale, name=name, untrained=is_untrained(args.model))
    io_desc = ("uint8 NHWC RGB in/out" if args.uint8_io else
               f"float NCHW {spec.input.upper()} in [0, 1], output " +
               ("Y unclamped (clamp after the RGB conversion)" if spec.input == "y" else "clamped") +
               (" (bicubic-upscaled input)" if spec.pre_upsample else ""))
    unit = " (uint8 levels)" if args.uint8_io else ""
    print(f"wrote {out} ({export.file_size(out) / 1e6:.2f} MB, {args.format}, "
          f"{'fp16' if args.fp16 else 'fp32'}, {io_desc}, dynamic batch/height/width; "
          f"I/O contract in its metadata, key {export.CONTRACT_KEY!r})")
    print(f"parity vs PyTorch fp32 on a random 32x32 image: max abs diff {diff:.3g}{unit}")
    if args.format == "openvino":  # the IR cannot carry the hint: OpenVINO ignores it there
        print("note: OpenVINO runs it in bf16 on CPUs with bf16 units unless compiled with "
              "{'INFERENCE_PRECISION_HINT': 'f32'}, as the parity check was (bf16 moved some pixels "
              "by up to 7 levels here)", file=sys.stderr)
    return 0


def register(sub) -> None:
    p = sub.add_parser("export", help="export a model to ONNX or OpenVINO IR, with a parity check")
    p.add_argument("model", type=path_text, help="a registered model name or a checkpoint file")
    p.add_argument("--format", choices=FORMATS, default="onnx", help="onnx (default) or openvino")
    add_output_option(p, required=False,
                      help="output file (.onnx, or .xml for openvino; .bin beside it; default: "
                        "<model>[-xS][-fp16][-uint8].onnx|.xml here, or beside a checkpoint)")
    p.add_argument("--fp16", action="store_true", help="float16 weights and compute")
    p.add_argument("--uint8-io", action="store_true",
                   help="take and return uint8 NHWC RGB (normalisation and rounding in the graph)")
    p.add_argument("--scale", help="the scale (required for vdsr with --uint8-io; else only checked; "
                                    "default: the model's)")
    add_overwrite_option(p, help="replace an existing output (default: refuse)")
    add_untrained_option(p)
    p.set_defaults(func=run)
