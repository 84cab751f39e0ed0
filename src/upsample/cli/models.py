"""`upsample models`: the registered models as a table or JSON (rows of `models.table`, the
registry's `describe()` written down, so that the list prints without importing torch)."""

from __future__ import annotations

import argparse
import json

from ..models import table


def _human(n: float) -> str:
    for unit, div in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def run(args: argparse.Namespace) -> int:
    rows = [table.describe(n) for n in table.names(None if args.all else "generator", aliases=True)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    print(f"{'name':<{width}}  {'scale':>5}  {'params':>10}  {'macs':>8}  input  weights")
    for r in rows:
        scale = f"x{r['scale']}" if r["scale"] else (
            "any" if table.row(r["name"]).pre_upsample else "-")
        weights = r["weights"] or (f"(alias of {r['alias_of']})" if "alias_of" in r else "-")
        print(f"{r['name']:<{width}}  {scale:>5}  {r['params']:>10,}  {_human(r['macs']):>8}  "
              f"{r['input']:<5}  {weights}")
    size = table.MACS_INPUT
    others = "".join(f"; {n}: {s}x{s}, the size it takes" for n, s in table.MACS_INPUT_OF.items()
                     if any(r["name"] == n for r in rows))
    print(f"macs: multiply-accumulates for one {size}x{size} input image (vdsr: its "
          f"bicubic-upscaled input{others}); models without weights are refused for inference until trained "
          f"(`upsample train`; --allow-untrained runs them for timing)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("models", help="list the registered models: scale, parameters, MACs, weights")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.add_argument("--all", action="store_true", help="include the GAN discriminators")
    p.set_defaults(func=run)
