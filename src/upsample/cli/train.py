"""`upsample train CONFIG`: the command line of `training.loop` (what the run dir holds and how
a run resumes: see there)."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from ..errors import RankZeroError, UserError
from . import Terminated
from .options import RECIPE_FILE, add_max_pixels_option, check_name_or_file, path_text, silence



def run(args: argparse.Namespace) -> int:
    _check_name(args.config, RECIPE_FILE)
    if args.init:
        _check_name(args.init, "a checkpoint file")
    from ..inference.batch import check_writable
    from ..training import loop
    from ..training.procs import launched_rank  # only rank 0 writes the run dir
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / Path(args.config).stem  # loop's default
    if not run_dir.is_file() and launched_rank() == 0:  # a file: the loop says so in its own words
        check_writable(run_dir, run_dir, "--run-dir")  # before the training images are decoded
    consoles = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = Console(sys.stdout), Console(sys.stderr)
    try:
        return loop.train_from_args(config=args.config, overrides=args.overrides, run_dir=args.run_dir,
                                    resume=args.resume, reset=args.reset, device=args.device,
                                    init=args.init, max_minutes=args.max_minutes,
                                    started=getattr(args, "called_at", None))
    except KeyboardInterrupt as exc:
        if launched_rank() > 0:  # rank 0 says "interrupted" for the run: one line, not N
            return 143 if isinstance(exc, Terminated) else 130
        raise
    finally:
        sys.stdout, sys.stderr = consoles


def _check_name(arg: str, other: str) -> None:
    """A mistyped model name as CONFIG or --init, said with the names it is close to before the
    training's imports and its images are decoded (CONFIG espcn-x33 was "config file not found");
    every process of a launch checks it, rank 0 alone says it. `other`: what else `arg` may be."""
    try:
        check_name_or_file(arg, other)
    except UserError as exc:
        raise (RankZeroError(str(exc)) if os.environ.get("RANK", "0") != "0" else exc) from None


class Console:
    """A console stream of a training run: once its reader has gone (a closed pipe: `| head`, a
    `| tee` that Ctrl-C ended) what follows is dropped and the run goes on to its checkpoint and
    its own exit status. The BrokenPipeError ended the run mid-step, unsaved, with status 0."""

    def __init__(self, stream):
        self.stream, self.gone = stream, False

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                return self.stream.write(text)
            except BrokenPipeError:
                self._drop()
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self._drop()

    def _drop(self) -> None:
        self.gone = True
        try:  # what the stream still buffers, and later writes of the process, go nowhere
            silence(self.stream)
        except (OSError, ValueError, AttributeError):  # a stream without a file (a test's)
            pass

    def __getattr__(self, name):  # isatty, fileno, encoding: the stream's
        return getattr(self.stream, name)


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model from a TOML recipe or a shipped model's name",
                       description="Train a registered model. Under torchrun it runs DDP; "
                                   "data.batch_size is per process. Also under accelerate launch "
                                   "and deepspeed --module (its [deepspeed] section).")
    p.add_argument("config", type=path_text, help="a TOML recipe file (e.g. configs/espcn-x3.toml), or a shipped model's name "
                   "for the recipe that trained it (e.g. espcn-x3)")
    p.add_argument("--run-dir", metavar="DIR", type=path_text, help="default: runs/<config stem>")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    g.add_argument("--reset", action="store_true", help="discard the run in --run-dir and start over")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=1e-4 (repeatable; default: none)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--init", metavar="CKPT", help="start from these weights: a checkpoint, or a "
                   "shipped model's name, e.g. espcn-x2 (tensors that fit; default: train.init; \"\": none, "
                   "as wrapper scripts pass an unset one)")
    p.add_argument("--max-minutes", type=positive_minutes, metavar="N",
                   help="train a time-boxed chunk: save and stop before N minutes of wall time "
                        "(continue with --resume; default: no limit)")
    add_max_pixels_option(p)
    p.set_defaults(func=run)


def positive_minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a positive number of minutes, got {text!r}")
    return value
