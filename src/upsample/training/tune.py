"""`upsample tune`: hyper-parameter search over a training recipe with Optuna.

Each trial trains the recipe (`train.train`, the same loop as `upsample train`) with values drawn
by a TPE sampler from the config's [tune] ranges: lr, momentum (SGD), batch size, gradient clip,
weight decay. Every validation reports the validation PSNR to the trial, and a median pruner stops
trials that fall behind the median of earlier ones at the same step. The study lives in the
`--storage` database: running the command again continues it until `--trials` trials have
finished (completed or pruned). The best trial's full config is written as TOML.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path

from . import config as config_mod
from ..errors import UserError

FINISHED = ("COMPLETE", "PRUNED")


def suggest(trial, cfg: config_mod.Config) -> config_mod.Config:
    """A copy of `cfg` with the [tune] ranges drawn for this trial."""
    t, c = cfg.tune, copy.deepcopy(cfg)
    if t.lr:
        c.optim.lr = trial.suggest_float("lr", *t.lr, log=t.lr[0] > 0)
    if t.momentum and c.optim.name == "sgd":
        c.optim.momentum = trial.suggest_float("momentum", *t.momentum)
    if t.batch_size:
        c.data.batch_size = trial.suggest_categorical("batch_size", list(t.batch_size))
    if t.clip:
        c.optim.clip = trial.suggest_float("clip", *t.clip)
    if t.weight_decay:
        c.optim.weight_decay = trial.suggest_float("weight_decay", *t.weight_decay,
                                                   log=t.weight_decay[0] > 0)
    if t.trial_steps:
        c.train.steps = t.trial_steps
    return c


def best_val_psnr(run_dir: Path) -> float:
    vals = [json.loads(line).get("val_psnr") for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    vals = [v for v in vals if v is not None]
    if not vals:
        raise UserError(f"{run_dir}: the trial ran no validation; set val.every (or tune.trial_steps)")
    return max(vals)


def run(args: argparse.Namespace) -> int:
    import optuna

    from .train import train

    cfg = config_mod.load_config(args.config, args.overrides)
    if args.trials < 1:
        raise UserError(f"--trials must be >= 1, got {args.trials}")
    study_name = args.study or Path(args.config).stem
    root = Path(args.run_dir) if args.run_dir else Path("runs") / "tune" / study_name
    out = Path(args.out) if args.out else root / "best.toml"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(
            study_name=study_name, storage=args.storage, load_if_exists=True, direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=cfg.train.seed),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0))
    except Exception as exc:  # a bad URL, an unreachable or unwritable database
        raise UserError(f"--storage {args.storage}: {exc}") from None
    done = [t for t in study.trials if t.state.name in FINISHED]
    left = args.trials - len(done)
    print(f"study {study_name!r} in {args.storage}: {len(done)} trial(s) finished, {max(left, 0)} to run",
          file=sys.stderr)

    def objective(trial) -> float:
        c = suggest(trial, cfg)
        run_dir = root / f"trial-{trial.number:03d}"
        pruned = []

        def on_validate(step: int, psnr: float) -> bool:
            trial.report(psnr, step)
            if trial.should_prune():
                pruned.append(step)
                return True
            return False

        rc = train(c, run_dir, reset=run_dir.exists(), device=args.device,
                   config_text=config_mod.to_toml(c), on_validate=on_validate)
        if rc != 0:  # Ctrl-C / SIGTERM: stop the study; the trial is rerun next time
            raise KeyboardInterrupt
        value = best_val_psnr(run_dir)
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in trial.params.items())
        state = f"pruned at step {pruned[0]}" if pruned else "complete"
        print(f"trial {trial.number}: {state}, best val PSNR {value:.3f} dB ({params})", file=sys.stderr)
        if pruned:
            raise optuna.TrialPruned()
        return value

    if left > 0:
        try:
            study.optimize(objective, n_trials=left, catch=())
        except KeyboardInterrupt:
            print(f"interrupted; run the same command again to continue the study", file=sys.stderr)
            return 130
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not complete:
        raise UserError(f"study {study_name!r}: no trial completed (all pruned or failed)")
    best = study.best_trial
    best_cfg = suggest(optuna.trial.FixedTrial(best.params), cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    tmp.write_text(f"# best of study {study_name!r} ({len(complete)} complete trials): trial "
                   f"{best.number}, val PSNR {best.value:.3f} dB\n" + config_mod.to_toml(best_cfg))
    os.replace(tmp, out)
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items())
    print(f"best: trial {best.number}, val PSNR {best.value:.3f} dB ({params}) -> {out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("tune", help="search training hyper-parameters with Optuna (TPE + median pruning)",
                       description=__doc__.splitlines()[0])
    p.add_argument("config", help="TOML recipe; its [tune] section gives the search ranges")
    p.add_argument("--trials", type=int, default=10, help="finished trials wanted in the study")
    p.add_argument("--storage", default="sqlite:///tune.db",
                   help="Optuna storage URL; the study resumes from it (default: sqlite:///tune.db)")
    p.add_argument("--study", help="study name (default: the config's file stem)")
    p.add_argument("--run-dir", metavar="DIR", help="trial run dirs (default: runs/tune/<study>)")
    p.add_argument("-o", "--out", help="best config TOML (default: <run dir>/best.toml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set tune.trial_steps=2000")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=run)
