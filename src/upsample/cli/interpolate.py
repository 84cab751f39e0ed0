"""`upsample interpolate A B --alpha a -o OUT`: parameter-wise (1 - a) A + a B of two checkpoints
of one architecture (checkpoint.interpolate_checkpoints); A or B may be a shipped model's name."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError
from .options import add_output_option, add_overwrite_option, check_name_or_file, path_text


def checkpoint_file(arg: str) -> str:
    """A checkpoint path as given, or a registered name's shipped weights file."""
    from ..models import registry
    check_name_or_file(arg)
    if Path(arg).exists() or not registry.is_registered(arg):
        return arg
    weights = registry.weights_path(arg)
    if weights is None:
        raise UserError(f"{arg} has no trained weights to blend; give a checkpoint file of it "
                        "(`upsample train` writes one)")
    return str(weights)


def run(args: argparse.Namespace) -> int:
    try:
        alpha = float(args.alpha)
    except ValueError:
        raise UserError(f"--alpha must be a number in [0, 1], got {args.alpha!r}") from None
    if not 0 <= alpha <= 1:
        raise UserError(f"--alpha must be in [0, 1], got {args.alpha}")
    out = Path(args.output)
    if out.suffix.lower() != ".safetensors":
        raise UserError(f"the output is a safetensors checkpoint: name it *.safetensors, not {args.output}")
    from ..inference.batch import check_writable
    from ..media.imageio import check_new_file
    a, b = checkpoint_file(args.a), checkpoint_file(args.b)
    check_new_file(out, overwrite=args.overwrite, inputs=[a, b])
    check_writable(out.parent, out)  # one clear line, not the OSError of a temporary file
    from ..models.checkpoint import interpolate_checkpoints
    interpolate_checkpoints(a, b, alpha, out, fp16=args.fp16, scale=args.scale)
    print(f"wrote {out} = {1 - alpha:g} * {args.a} + {alpha:g} * {args.b}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("interpolate", help="blend two checkpoints of one architecture parameter-wise")
    p.add_argument("a", type=path_text, help="checkpoint A (alpha 0), or a shipped model's name")
    p.add_argument("b", type=path_text, help="checkpoint B (alpha 1), or a shipped model's name")
    p.add_argument("--alpha", required=True, help="weight of B: the result is (1-alpha)*A + alpha*B")
    add_output_option(p, help="output .safetensors file")
    p.add_argument("--fp16", action="store_true", help="store the result in float16")
    p.add_argument("--scale", type=int, choices=(1, 2, 3, 4), default=None,
                   help="the scale of an original-ESRGAN file whose tensors do not tell it (x3 has one "
                        "upsampling conv, as x2 has); default: the other checkpoint's, else x2")
    add_overwrite_option(p, help="replace an existing output (default: refuse)")
    p.set_defaults(func=run)
