"""`upsample tune`: hyper-parameter search over a training recipe with Optuna.

Each trial trains the recipe (`loop.train`, the same loop as `upsample train`) with values drawn
by a TPE sampler from the config's [tune] ranges: lr, momentum (SGD), batch size, gradient clip,
weight decay. Every validation reports the validation PSNR to the trial, and a median pruner stops
trials that fall behind the median of earlier ones at the same step. The study lives in the
`--storage` database: running the command again continues it until `--trials` trials have
finished (completed or pruned). The best trial's full config is written as TOML.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from . import config as config_mod
from ..errors import UserError
from ..inference.batch import check_writable
from ..media.imageio import atomic_write_bytes

FINISHED = ("COMPLETE", "PRUNED")


class TrialStopped(KeyboardInterrupt):
    """A trial stopped by Ctrl-C (status 130) or SIGTERM (143): the study stops with it."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


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


def search_space(cfg: config_mod.Config) -> dict[str, list]:
    """The [tune] ranges `suggest` draws from, by parameter name (the ones in use)."""
    t = cfg.tune
    space = {"lr": t.lr, "momentum": t.momentum if cfg.optim.name == "sgd" else [],
             "batch_size": t.batch_size, "clip": t.clip, "weight_decay": t.weight_decay}
    return {k: list(v) for k, v in space.items() if v}


def format_space(space: dict[str, list]) -> str:
    # a range (list), or only the name where a study made before the stamp recorded none
    return ", ".join(f"{k} {v}" if isinstance(v, list) else k for k, v in space.items()) or "nothing"


# what a trial's val PSNR depends on besides the searched values: a resumed study must keep it
TRIAL_SETUP = ("model.", "data.", "degrade.", "loss.", "optim.name", "sched.", "val.", "train.steps",
               "train.seed", "train.accumulate", "train.ema", "train.init")
SEARCHED = {"optim.lr", "optim.momentum", "data.batch_size", "optim.clip", "optim.weight_decay"}
NOT_RESULTS = {"data.workers", "data.cache_mb", "data.store_dir", "val.patience"}  # speed, not scores


def trial_setup(cfg: config_mod.Config) -> dict:
    """The values of a trial's config (`tune.trial_steps` as its train.steps) that decide its
    val PSNR, but for those the study searches."""
    t = copy.deepcopy(cfg)
    if cfg.tune.trial_steps:
        t.train.steps = cfg.tune.trial_steps
    setup = {k: v for k, v in config_mod.flat(config_mod.to_dict(t)).items()
             if config_mod.key_in(k, TRIAL_SETUP) and k not in SEARCHED and k not in NOT_RESULTS}
    if cfg.train.init:  # trials start from it (before 2026-12-06 they trained from scratch all the same)
        setup["trials.start_from"] = "train.init"
    return setup


def check_same_setup(study, cfg: config_mod.Config, storage: str) -> None:
    """A resumed study must train its trials as it did: a longer trial, other data or another
    validation scores higher for that alone, and the best trial was then the longest (a resumed
    study ran trial 3 for 600 steps against 200 and called it best). Stamped by the first call."""
    setup = json.loads(json.dumps(trial_setup(cfg)))  # as the storage gives it back
    held = study.user_attrs.get("trial_setup")
    scored = any(t.state.name in FINISHED for t in study.trials)
    if held is None and scored:
        return  # a study made before this stamp: it keeps going unchecked
    if not scored:  # new, or no trial scored yet (a first call that failed on its input): stamp now
        study.set_user_attr("trial_setup", setup)
        return
    changed = sorted(k for k in set(held) | set(setup) if held.get(k) != setup.get(k))
    if changed:
        shown = ", ".join(f"{k} ({held.get(k)!r} in the study, {setup.get(k)!r} now)" for k in changed[:3])
        raise UserError(f"study {study.study_name!r} in {storage} trained its trials otherwise: {shown}"
                        f"{f' and {len(changed) - 3} more' if len(changed) > 3 else ''}; give the same "
                        "settings back, or name a new --study (its trials' scores are not comparable)")


def check_same_space(study, cfg: config_mod.Config, storage: str) -> None:
    """A resumed study must search the ranges it was made with: trials drawn from other ranges
    are not comparable, and its best trial (drawn without a parameter now searched) could not
    be written as a config. The first call stamps its ranges on the study."""
    space = json.loads(json.dumps(search_space(cfg)))  # as the storage gives it back
    held = study.user_attrs.get("search_space")
    if held is None and study.trials:  # a study made before the stamp: its trials' parameters
        names = set().union(*(t.distributions for t in study.trials))
        held = space if names == set(space) else dict.fromkeys(sorted(names))
    # trials scored or running (another process's) hold the ranges; a first call that failed did not
    held_by_trials = any(t.state.name in (*FINISHED, "RUNNING") for t in study.trials)
    if held is not None and held != space and held_by_trials:
        raise UserError(f"study {study.study_name!r} in {storage} searched {format_space(held)}, this "
                        f"call's [tune] ranges are {format_space(space)}: give the ranges back, or name "
                        "a new --study (trials of other ranges are not comparable)")
    if study.user_attrs.get("search_space") != space:  # new, made before the stamp, or none held
        study.set_user_attr("search_space", space)


def check_search_space(cfg: config_mod.Config) -> None:
    """Every trial's config is one `upsample train` takes: the recipe checked at each corner of
    the [tune] ranges (a trial ran lr 5e-6 under eta_min 1e-4, its lr climbing, and best.toml was
    then refused by `train`); and trials are ranked by validation, so there must be some."""
    import optuna
    if not cfg.data.val_list and cfg.data.val_fraction == 0:
        raise UserError("tune ranks trials by validation PSNR: set data.val_fraction > 0 or data.val_list")
    if not search_space(cfg):  # every trial would train the same config
        raise UserError("the recipe's [tune] section searches nothing (lr, batch_size, clip, weight_decay "
                        "and, with optim.name = \"sgd\", momentum are all empty); give a range to search")
    ends = {k: list(dict.fromkeys(v)) for k, v in search_space(cfg).items()}  # a range's ends, or the choices
    for values in itertools.product(*ends.values()):
        params = dict(zip(ends, values))
        try:
            config_mod.validate(suggest(optuna.trial.FixedTrial(params), cfg))
        except UserError as exc:
            raise UserError(f"tune: a trial with {format_params(params)} would be refused by `upsample "
                            f"train` ({str(exc).removeprefix('config: ')}); narrow the [tune] ranges") from None


def requeue_stopped(study) -> None:
    """A trial stopped by Ctrl-C or SIGTERM runs again, with its values, from its start (Optuna
    marks it failed; the next call drew new values)."""
    import optuna
    trials = study.trials
    waiting = any(t.state == optuna.trial.TrialState.WAITING for t in trials)
    if trials and trials[-1].user_attrs.get("stopped") and not waiting \
            and _in_space(trials[-1].params, study.user_attrs.get("search_space")):
        study.enqueue_trial(trials[-1].params)


def _in_space(params: dict, space: dict | None) -> bool:
    """Whether a trial's values lie in the [tune] ranges `space` (a stopped trial of a study
    whose ranges changed before any trial scored is not run again: it would run outside them)."""
    if space is None:
        return True  # a study made before the stamp: its ranges unknown, as they were
    if set(params) != set(space):
        return False
    choices = {k: v for k, v in params.items() if k == "batch_size"}  # categorical: one of the list
    return (all(v in space[k] for k, v in choices.items())
            and all(space[k][0] <= v <= space[k][1] for k, v in params.items() if k not in choices))


def best_val_psnr(run_dir: Path) -> float:
    vals = [json.loads(line).get("val_psnr") for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    vals = [v for v in vals if v is not None]
    if not vals:
        raise UserError(f"{run_dir}: the trial ran no validation; set val.every (or tune.trial_steps)")
    return max(vals)


@dataclass
class Best:
    """The study's best trial and where its full config was written."""
    number: int
    value: float
    params: dict
    path: Path


def format_params(params: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


BEST_HEADER = "# best of study {!r}"  # best.toml's first line: -o replaces only such a file


def _written_by(path: Path, study_name: str) -> bool:
    """Whether `path` is the best config an earlier call of this study wrote."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().startswith(BEST_HEADER.format(study_name) + " (")
    except (OSError, UnicodeDecodeError):
        return False


STUDY_FILE = "STUDY"  # in a tune run dir: the study (name, storage) whose trials it holds


def claim_run_dir(root: Path, study: str) -> None:
    """`root` for this study's trials: new, empty, or already this study's; a folder that holds
    another study's trials (trial-000 ... would be replaced) or other files is refused."""
    if root.exists() and not root.is_dir():
        raise UserError(f"--run-dir {root} is a file; name a folder for the trials")
    mark = root / STUDY_FILE
    if mark.exists():
        held = mark.read_text().strip()
        if held != study:
            name, _, where = held.partition("\t")
            raise UserError(f"--run-dir {root} holds the trials of study {name!r} ({where}); name another "
                            "--run-dir for this one")
        return
    if root.exists() and any(root.iterdir()):
        raise UserError(f"--run-dir {root} is not empty and holds no study; name a new or empty folder")
    root.mkdir(parents=True, exist_ok=True)
    mark.write_text(study + "\n")


def storage_error(storage: str, exc: Exception) -> UserError:
    """One line for a storage Optuna could not open: SQLAlchemy's message has a second line
    (a link to its docs) and names its exception class first."""
    text = re.sub(r"^\([\w.]+\)\s*", "", str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__)
    return UserError(f"--storage {storage}: {text.rstrip('.')}; give a database URL Optuna can open, e.g. "
                     "sqlite:///tune.db (in a writable folder that exists)")


def _sqlite_url(storage: str):
    """The parsed URL of an SQLite storage, else None (another database, or no URL: Optuna's own
    message says so, `storage_error`)."""
    from sqlalchemy.engine import make_url
    try:
        url = make_url(storage)
    except Exception:
        return None
    return url if url.get_backend_name() == "sqlite" else None


def sqlite_file(storage: str) -> Path | None:
    """The file of an SQLite storage URL (resolved), else None (in memory, or not SQLite)."""
    url = _sqlite_url(storage)
    if url is None or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database).resolve()


def check_lasting(storage: str) -> None:
    """An in-memory SQLite URL (`sqlite:///` with no file, a typo's result) would lose the study
    at exit, where the command promises to resume it."""
    if _sqlite_url(storage) is not None and sqlite_file(storage) is None:
        raise UserError(f"--storage {storage} is an in-memory database: the study could not be resumed; "
                        "name a file, e.g. sqlite:///tune.db")


def trial_seeded_sampler(seed: int):
    """TPE whose draws for trial N are seeded by `seed` + N: trial numbers are the storage's, so a
    resumed study draws new values and two processes on one study draw different ones (seeded
    once per process, both drew the same values: every trial ran twice), reproducibly."""
    import optuna

    class TrialSeededTPE(optuna.samplers.BaseSampler):
        def __init__(self):
            self.by_trial = {}

        def of(self, trial):  # TPE keeps no state but its random generator: one per trial
            return self.by_trial.setdefault(trial.number, optuna.samplers.TPESampler(
                seed=seed + trial.number, constant_liar=True))

        def infer_relative_search_space(self, study, trial):
            return self.of(trial).infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self.of(trial).sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self.of(trial).sample_independent(study, trial, param_name, param_distribution)

        def before_trial(self, study, trial):
            self.of(trial).before_trial(study, trial)

        def after_trial(self, study, trial, state, values):
            self.of(trial).after_trial(study, trial, state, values)
            self.by_trial.pop(trial.number, None)

    return TrialSeededTPE()


def open_study(name: str, storage: str, seed: int):
    """The study `name` in `storage` (made if new), its sampler seeded by trial number
    (`trial_seeded_sampler`)."""
    import optuna
    check_lasting(storage)
    try:
        return optuna.create_study(
            study_name=name, storage=storage, load_if_exists=True, direction="maximize",
            sampler=trial_seeded_sampler(seed),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0))
    except Exception as exc:  # a bad URL, an unreachable or unwritable database
        raise storage_error(storage, exc) from None


def tune(config: str, *, overrides: list[str], trials: int, storage: str, study_name: str | None,
         run_dir: str | None, out: str | None, device: str | None, overwrite: bool = False) -> Best | int:
    """Run the study in `storage` until `trials` trials have finished, then write the best
    trial's config as TOML (the recipe's own train.steps, not a trial's). Returns the best trial,
    or the exit status (130 Ctrl-C, 143 SIGTERM) when a trial's loop stopped on one (the same call
    continues it); a stop elsewhere raises KeyboardInterrupt (the CLI's `Terminated` for SIGTERM)."""
    import optuna

    from .procs import training_device  # torch: not for `tune --help`
    from .recipe import check_packaged_data, recipe_file, recipe_overrides, start_weights
    recipe = recipe_file(config)  # a shipped model's name: its packaged recipe, as `upsample train NAME`
    packaged = recipe != config
    cfg = config_mod.load_config(recipe, recipe_overrides(overrides, packaged))
    start_weights(cfg, None, how="--set train.init=CKPT")  # a fine-tune's trials start where it does
    if packaged:  # (after: its note comes once the study can start)
        check_packaged_data(config, cfg, overrides)
    training_device(device)  # before a study exists: a trial's error is one line, not a failed trial
    if trials < 1:
        raise UserError(f"--trials must be >= 1, got {trials}")
    study_name = study_name or Path(config).stem
    root = Path(run_dir) if run_dir else Path("runs") / "tune" / study_name
    given, out = out is not None, Path(out) if out else root / "best.toml"
    if out.exists() and out.resolve() == Path(recipe).resolve():
        raise UserError(f"-o {out} is the recipe itself; name another file for the best config")
    if out.exists() and out.resolve() == sqlite_file(storage):
        raise UserError(f"-o {out} is the study's database (--storage); name another file for the best config")
    if out.is_dir():
        raise UserError(f"-o {out} is a folder; name the file for the best config, e.g. {out / 'best.toml'}")
    # before any trial trains, not after all of them (the default -o is in the run dir)
    check_writable(root, root, "--run-dir")
    if given:
        check_writable(out.parent, out)
    # (the default, in the run dir, is guarded by `claim_run_dir`)
    if given and out.exists() and not overwrite and not _written_by(out, study_name):
        raise UserError(f"-o {out} exists and is not this study's best config; use --overwrite to "
                        "replace it, or name another file")
    check_search_space(cfg)
    # ERROR: optuna logs a failed trial's traceback as a warning; ours re-raises it as one line
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = open_study(study_name, storage, cfg.train.seed)  # before the run dir is claimed for it
    check_same_space(study, cfg, storage)
    check_same_setup(study, cfg, storage)
    claim_run_dir(root, f"{study_name}\t{storage}")
    done = [t for t in study.trials if t.state.name in FINISHED]
    left = trials - len(done)
    print(f"study {study_name!r} in {storage}: {len(done)} trial(s) finished, {max(left, 0)} to run",
          file=sys.stderr)
    if left > 0:
        requeue_stopped(study)
        try:
            # n_trials counts this process's trials; the callback stops it when the study, which
            # other processes may be running too, has the finished trials asked for
            enough = optuna.study.MaxTrialsCallback(trials, states=tuple(optuna.trial.TrialState[s] for s in FINISHED))
            study.optimize(objective(cfg, root, device), n_trials=left, catch=(), callbacks=[enough])
        except TrialStopped as stop:  # (another KeyboardInterrupt goes up: the CLI tells SIGTERM's 143)
            return stop.status
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not complete:
        raise UserError(f"study {study_name!r}: no trial completed (all pruned or failed)")
    best = study.best_trial
    best_cfg = suggest(optuna.trial.FixedTrial(best.params), cfg)
    best_cfg.train.steps = cfg.train.steps  # the recipe's length, not a trial's (tune.trial_steps)
    atomic_write_bytes(out, (f"{BEST_HEADER.format(study_name)} ({len(complete)} complete trials): trial "
                             f"{best.number}, val PSNR {best.value:.3f} dB\n" + config_mod.to_toml(best_cfg)).encode())
    return Best(number=best.number, value=best.value, params=best.params, path=out)


def objective(cfg: config_mod.Config, root: Path, device: str | None):
    """Optuna's objective: train one trial (`loop.train`) in root/trial-NNN, reporting each
    validation's PSNR to the pruner; the trial's value is its best validation PSNR."""
    import optuna

    from . import loop  # the module, not `train`: tests replace loop.train

    def run_trial(trial) -> float:
        c = suggest(trial, cfg)
        run_dir = root / f"trial-{trial.number:03d}"
        pruned = []

        def on_validate(step: int, psnr: float) -> bool:
            trial.report(psnr, step)
            if trial.should_prune():
                pruned.append(step)
                return True
            return False

        try:
            rc = loop.train(c, run_dir, reset=run_dir.exists(), device=device, init=c.train.init or None,
                            config_text=config_mod.to_toml(c), on_validate=on_validate,
                            continue_hint="the same tune command continues the study, this trial "
                                          "again from its start")
        except loop.Diverged as exc:  # a search's lr range may reach where training diverges
            print(f"trial {trial.number}: pruned, it diverged ({format_params(trial.params)}): "
                  f"{str(exc).split(';')[0]}", file=sys.stderr)
            raise optuna.TrialPruned() from None
        except KeyboardInterrupt:  # Ctrl-C / SIGTERM before the loop's own handler (decoding the images)
            trial.set_user_attr("stopped", True)  # `requeue_stopped`; Optuna marks it failed, raises it on
            raise
        if rc != 0:  # Ctrl-C / SIGTERM: stop the study; the trial is rerun next time
            trial.set_user_attr("stopped", True)  # `requeue_stopped`
            raise TrialStopped(rc)
        value = best_val_psnr(run_dir)
        state = f"pruned at step {pruned[0]}" if pruned else "complete"
        print(f"trial {trial.number}: {state}, best val PSNR {value:.3f} dB "
              f"({format_params(trial.params)})", file=sys.stderr)
        if pruned:
            raise optuna.TrialPruned()
        return value

    return run_trial
