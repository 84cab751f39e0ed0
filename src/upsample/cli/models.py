"""`upsample models`: the registered models as a table or JSON (rows from registry.describe)."""

from __future__ import annotations

import argparse
import json

from ..models import registry


def _human(n: float) -> str:
    for unit, div in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def run(args: argparse.Namespace) -> int:
    rows = [registry.describe(n) for n in registry.list_models(None if args.all else "generator")]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    print(f"{'name':<{width}}  {'scale':>5}  {'params':>10}  {'macs':>8}  input  weights")
    for r in rows:
        scale = f"x{r['scale']}" if r["scale"] else (
            "any" if registry.get_spec(r["name"]).pre_upsample else "-")
        print(f"{r['name']:<{width}}  {scale:>5}  {r['params']:>10,}  {_human(r['macs']):>8}  "
              f"{r['input']:<5}  {r['weights'] or '-'}")
    size = registry.MACS_INPUT
    print(f"macs: multiply-accumulates for one {size}x{size} input image (vdsr: its "
          f"bicubic-upscaled input); models without shipped weights start untrained")
    return 0


def register(sub) -> None:
    p = sub.add_parser("models", help="list the registered models: scale, parameters, MACs, weights")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.add_argument("--all", action="store_true", help="include the GAN discriminators")
    p.set_defaults(func=run)
