"""The `upsample` command line: one argparse parser, a sub-command per module.

Each module in COMMANDS defines `register(subparsers)`, which adds its sub-command and sets
`func` on it; `func(args)` returns the exit code. UserError becomes one line on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ..errors import UserError

# Modules that contribute sub-commands, in the order `upsample --help` lists them.
COMMANDS = [
    "upsample.cli.eval",
    "upsample.cli.image",
    "upsample.cli.video",
    "upsample.cli.bench",
    "upsample.cli.data",
    "upsample.cli.train",
    "upsample.cli.prune",
    "upsample.cli.tune",
    "upsample.cli.quantize",
    "upsample.cli.models",
    "upsample.cli.interpolate",
    "upsample.cli.export",
    "upsample.cli.cache",
    "upsample.cli.codec_study",
    "upsample.cli.make_clip",
]


# Sub-commands whose module imports no torch: when one is named, only it is registered, so that a
# cache hit (`fastpath`) starts without the 1.5-2 s import of torch that the others' modules cost.
LIGHT = {"image": "upsample.cli.image"}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="upsample", description="Image and video super-resolution: train, evaluate, upscale.")
    from .. import __version__
    parser.add_argument("--version", action="version", version=f"upsample {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in [only] if only else COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(LIGHT.get(argv[0]) if argv else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"upsample {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"upsample {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `upsample models | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
