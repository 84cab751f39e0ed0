"""`upsample prune MODEL -o OUT`: the command line of `training.prune` (structured filter
pruning with torch-pruning)."""

from __future__ import annotations

import argparse

from ..errors import UserError
from .options import add_output_option, add_overwrite_option, add_untrained_option, path_text


# training.prune.METHODS (a test checks it), here so that `prune --help` needs no torch
METHODS = ("l1", "l2", "group-l1", "random")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..inference.batch import check_writable
    from ..inference.load import check_trained
    from ..models import registry
    from ..training import prune
    from .options import said_stopped
    from .quantize import refuse_graph
    refuse_graph(args.model, "prune")
    if Path(args.output).suffix.lower() != ".safetensors":  # (said after the model loaded)
        raise UserError(f"-o {args.output}: the pruned model is a safetensors checkpoint; name a *.safetensors file")
    check_trained(args.model, args.allow_untrained)
    check_writable(Path(args.output).parent, args.output)  # one clear line, not a temporary file's OSError
    with said_stopped("prune", args.output):
        r = prune.prune_checkpoint(args.model, args.output, sparsity=args.sparsity, method=args.method,
                                   filter_ratio=args.filter_ratio, overwrite=args.overwrite)
    (before_p, after_p), (before_m, after_m) = r.params, r.macs
    print(f"params {before_p:,} -> {after_p:,} ({before_p / after_p:.2f}x fewer), "
          f"MACs per 256x256 input {before_m / 1e9:.2f}G -> {after_m / 1e9:.2f}G "
          f"({before_m / after_m:.2f}x fewer)")
    # a shipped model's name is also its recipe (`upsample train NAME`: training.recipe)
    recipe = args.model if registry.shipped_recipe(args.model) else "CONFIG"
    print(f"wrote {r.path} ({r.meta['arch']} {r.meta['kwargs']}); fine-tune it with "
          f"`upsample train {recipe} --init {r.path}`")
    return 0


def register(sub) -> None:
    p = sub.add_parser("prune", help="remove filters (structured pruning) with torch-pruning",
                       description="Structured filter pruning of a trained model with torch-pruning.")
    p.add_argument("model", type=path_text, help="a registered name (shipped weights) or a checkpoint")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--sparsity", type=float, default=0.5,
                     help="fraction of the parameters removed (default 0.5); the same fraction of "
                          "filters is taken from every layer to reach it")
    how.add_argument("--filter-ratio", type=float, default=None,
                     help="fraction of the filters removed from every layer (instead of --sparsity; "
                          "default: --sparsity decides)")
    p.add_argument("--method", default="l1", choices=METHODS,
                   help="filter ranking (default: each filter's L1 norm)")
    add_output_option(p, help="pruned checkpoint (.safetensors)")
    add_overwrite_option(p, help="replace an existing output (default: refuse)")
    add_untrained_option(p)
    p.set_defaults(func=run)
