"""`upsample tune CONFIG`: the command line of `training.tune` (an Optuna study over a recipe)."""

from __future__ import annotations

import argparse
import sys

from ..training import tune
from .options import (RECIPE_FILE, add_max_pixels_option, add_output_option, add_overwrite_option,
                      check_name_or_file, path_text)


def run(args: argparse.Namespace) -> int:
    from . import Terminated
    check_name_or_file(args.config, RECIPE_FILE)  # not "config file not found"
    try:
        best = tune.tune(args.config, overrides=args.overrides, trials=args.trials, storage=args.storage,
                         study_name=args.study, run_dir=args.run_dir, out=args.out, device=args.device,
                         overwrite=args.overwrite)
    except KeyboardInterrupt as exc:  # outside a trial's loop (its images decoding): SIGTERM is 143 too
        best = 143 if isinstance(exc, Terminated) else 130
    if isinstance(best, int):  # stopped: Ctrl-C 130, SIGTERM 143
        print(f"upsample tune: {'terminated' if best == 143 else 'interrupted'}; run the same command again "
              "to continue the study (the stopped trial runs again from its start)", file=sys.stderr)
        return best
    print(f"best: trial {best.number}, val PSNR {best.value:.3f} dB ({tune.format_params(best.params)})"
          f" -> {best.path}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("tune", help="search training hyper-parameters with Optuna (TPE; weak trials stopped early)",
                       description=tune.__doc__.splitlines()[0])
    p.add_argument("config", type=path_text, help="TOML recipe, or a shipped model's name for its packaged "
                   "recipe (as `upsample train NAME`); its [tune] section gives the search ranges")
    p.add_argument("--trials", type=int, default=10, help="finished trials wanted in the study (default 10)")
    p.add_argument("--storage", default="sqlite:///tune.db",
                   help="Optuna storage URL; the study resumes from it (default: sqlite:///tune.db)")
    p.add_argument("--study", help="study name (default: the config's file stem)")
    p.add_argument("--run-dir", metavar="DIR", type=path_text, help="trial run dirs (default: runs/tune/<study>)")
    add_output_option(p, dest="out", metavar="TOML", required=False,
                      help="best config TOML (default: <run dir>/best.toml); a file there that an "
                           "earlier call of this study did not write is refused without --overwrite")
    add_overwrite_option(p, help="replace an existing -o file (default: refuse)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set tune.trial_steps=2000 (repeatable; default: none)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    add_max_pixels_option(p)
    p.set_defaults(func=run)
