"""What a run trains: the config it resolves to (the recipe and --set, or a resumed run's own
config.toml) and the weights it starts from (--init / train.init). Apart from the loop because
it is decided once, before training, from the command line's view of the run."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from torch import nn

from ..errors import UserError
from ..models import checkpoint, registry
from . import config as config_mod

WIDTH_KEYS = ("num_feat", "mid_feat", "d_atten", "num_grow_ch")  # what `upsample prune` shrinks


def recipe_file(config: str) -> str:
    """The recipe file `config` names: a path as given, or a shipped model's name (`upsample train
    espcn-x3`: the resolved config that trained its shipped weights, packaged beside them, so an
    installed package trains without the repository's configs/)."""
    if Path(config).is_file() or not registry.is_registered(config):
        return config  # a file (or a missing one or a folder, which loading says)
    packaged = registry.shipped_recipe(config)
    if packaged is None:
        local = Path("configs") / f"{config}.toml"
        hint = f"e.g. {local}" if local.is_file() else \
            f"the smallest: {config_mod.smallest_recipe(config)}"
        raise UserError(f"{config} has no shipped weights, so no recipe is packaged for it; give a recipe "
                        f"file ({hint}; the source repository's configs/ hold the papers' recipes)")
    return str(packaged)  # `check_packaged_data` names it once the run can start


# How a step computes fastest belongs to the machine at hand, not to the recipe: a packaged recipe
# records the one that trained the shipped model (bf16 on an AVX-512 CPU), ~10x slower where bf16
# is emulated. `upsample train NAME` times the modes here; a --set of them still wins. Its
# train.threads stays (one: measured faster for these small models on a shared 2-core CPU, 927
# against 215-379 patches/s for espcn-x3 with torch's two; --set train.threads=N on a larger one).
MACHINE_SETTINGS = ("train.amp=auto", "train.channels_last=auto", "train.compile=auto")


def recipe_overrides(overrides: list[str], packaged: bool) -> list[str]:
    """--set as a recipe takes it: after a packaged recipe's machine settings left to this machine."""
    return [*MACHINE_SETTINGS, *overrides] if packaged else list(overrides)


def check_packaged_data(name: str, cfg: config_mod.Config, overrides: list[str]) -> None:
    """The packaged recipe of a shipped model names the images that trained it: where they are not
    here and no --set gives others, say how to give yours (not only "folder not found"); else a
    note names the recipe."""
    if not any(o.split("=", 1)[0].strip() == "data.train" for o in overrides):
        missing = [p for p in cfg.data.train if not Path(p).exists()]
        if missing:
            raise UserError(f"data.train: {missing[0]} not found: the recipe of the shipped {name} names the "
                            "images that trained it; --set 'data.train=[\"DIR\"]' gives yours")
    _note(f"the recipe that trained the shipped {name}: {registry.shipped_recipe(name)}")


def resolve_config(config: str, overrides: list[str], *, run_dir: Path, resume: bool,
                   init: str | None, packaged: bool = False) -> tuple[config_mod.Config, str | None]:
    """(config, the TOML to record in a new run dir, or None when a run is resumed). `packaged`:
    `config` is a shipped model's recipe, whose machine settings a new run leaves to this machine."""
    if resume and (run_dir / "last_state.pt").exists():  # else check_run_dir says why not
        # a run continues with its own resolved config; --set may still change it (e.g. steps)
        if init:
            raise UserError("--init starts a new run from those weights; a resumed run continues its own "
                            "(drop --init, or start anew with --reset or another --run-dir)")
        if not (run_dir / "config.toml").is_file():
            raise UserError(f"--resume: {run_dir} holds last_state.pt but not config.toml, the run's "
                            "config; copy it back from where the run was trained, or start over with --reset")
        saved = run_config(run_dir)
        cfg = config_mod.load_config(run_dir / "config.toml", overrides)
        check_resumable(saved, cfg)
        _note(recipe_differs(config, recipe_overrides(overrides, packaged), cfg, run_dir))
        return cfg, None
    cfg = config_mod.load_config(config, recipe_overrides(overrides, packaged))
    start_weights(cfg, init)
    return cfg, config_mod.to_toml(cfg)


def run_config(run_dir: Path) -> config_mod.Config:
    """The resumed run's own config.toml; where it no longer loads (edited by hand, a disk that
    cut it short), a line that says it is the run's file and how to go on."""
    try:
        return config_mod.load_config(run_dir / "config.toml", [])
    except UserError as exc:
        raise UserError(f"--resume: the run's {run_dir / 'config.toml'} does not load ({exc}); fix it, or "
                        "start over with --reset") from None


def start_weights(cfg: config_mod.Config, init: str | None, how: str = "pass --init CKPT") -> None:
    """Set cfg.train.init to the weights file a new run starts from (`init`, else the recipe's
    train.init; a shipped model's name is its weights), checked, and the model's widths to a
    pruned file's. `how`: how this command gives other weights, for the message."""
    if init:  # the resolved config records where the run started
        cfg.train.init = init_file(init, "--init")
    elif cfg.train.init:
        cfg.train.init = init_file(cfg.train.init, "train.init")
        if not Path(cfg.train.init).is_file():
            name = cfg.model.name if registry.weights_path(cfg.model.name) else ""
            shipped = f", or {how.replace('CKPT', name)} (its shipped weights)" if name else ""
            raise UserError(f"train.init: {cfg.train.init} not found (the weights this recipe starts "
                            f"from): train that stage first, or {how}{shipped}")
    if cfg.train.init:
        _note(adopt_init_widths(cfg, cfg.train.init))


def _note(text: str | None) -> None:
    """A note on stderr, once: from the first process of a torchrun / accelerate / deepspeed
    launch (every rank resolves the config, before the processes are started)."""
    if text and os.environ.get("RANK", "0") == "0":
        print(f"note: {text}", file=sys.stderr)


def init_file(arg: str, what: str) -> str:
    """The weights file --init / train.init names: a path as given, or a shipped model's name
    (`--init espcn-x2` fine-tunes the shipped weights, as `upsample interpolate` takes them)."""
    if Path(arg).exists() or not registry.is_registered(arg):
        return arg
    weights = registry.weights_path(arg)
    if weights is None:
        shipped = ", ".join(n for n in registry.list_models() if registry.weights_path(n))
        raise UserError(f"{what} {arg}: that model has no shipped weights to start from (shipped: "
                        f"{shipped}); give a checkpoint file of it, or train without {what}")
    return str(weights)


def recipe_differs(config: str, overrides: list[str], cfg: config_mod.Config, run_dir: Path) -> str | None:
    """A note naming the values where the recipe (with --set) differs from the resumed run's own
    config.toml, which the run continues with, and which of them --set can still change."""
    if not Path(config).is_file():
        return None
    try:
        recipe = config_mod.load_config(config, overrides)
    except UserError as exc:  # an edited recipe that no longer loads does not stop the resume
        return f"resuming with {run_dir / 'config.toml'}; {config} is not read ({exc})"
    run, new = config_mod.flat(config_mod.to_dict(cfg)), config_mod.flat(config_mod.to_dict(recipe))
    # train.init records --init; a resumed run starts from its own state, not from it
    changed = [k for k in run if run[k] != new.get(k) and k != "train.init"]
    if not changed:
        return None
    shown = ", ".join(f"{k} ({run[k]!r} in the run, {new.get(k)!r} in the recipe)" for k in changed[:4])
    more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
    settable = [k for k in changed if resumable(k)]
    fixed = [k for k in changed if not resumable(k)]
    how = (f"to take the recipe's {', '.join(settable)}, add --set KEY=VALUE to this command" if settable else "") + \
        ("; " if settable and fixed else "") + \
        (f"a resumed run keeps its {', '.join(fixed)} (a new run changes it: --reset or another "
         "--run-dir)" if fixed else "")
    return (f"resuming with {run_dir / 'config.toml'}, the run's own config (the run goes on as it "
            f"was set up); {config} differs in {shown}{more}: {how}")


# What --set may change when a run resumes: its length, logging, validation and speed. Everything
# else (model, data, optimizer, schedule, seed, losses) is in the saved state or decides it.
RESUMABLE = ("train.steps", "train.log_every", "train.ckpt_every", "train.threads", "train.amp",
             "train.channels_last", "train.compile", "val.", "data.workers", "data.cache_mb", "data.store_dir")


def resumable(key: str) -> bool:
    """Whether --set may change `key` (a dotted config key) when a run resumes."""
    return config_mod.key_in(key, RESUMABLE)


def check_resumable(saved: config_mod.Config, cfg: config_mod.Config) -> None:
    """A UserError when `cfg` (the run's config with --set) changes what a resumed run keeps."""
    before, after = config_mod.flat(config_mod.to_dict(saved)), config_mod.flat(config_mod.to_dict(cfg))
    changed = [k for k in after if before.get(k) != after[k] and not resumable(k)]
    if changed:
        raise UserError(f"--resume --set {changed[0]}: a resumed run keeps its {changed[0].split('.')[0]} "
                        f"settings (was {before.get(changed[0])!r}); start a new run to change it (--reset, "
                        "or another --run-dir with --init of its weights)")


def adopt_init_widths(cfg: config_mod.Config, path: str) -> str | None:
    """A pruned --init checkpoint is the config's architecture at smaller widths: train that
    shape (recorded in model.kwargs, so the run dir and its checkpoints rebuild it)."""
    _, meta = checkpoint.load_checkpoint(path)
    spec = registry.get_spec(cfg.model.name)
    if meta["arch"] != spec.arch:
        return None
    want = registry.full_kwargs(spec.arch, {**spec.kwargs, **cfg.model.kwargs})
    have = registry.full_kwargs(meta["arch"], meta["kwargs"])
    diff = {k: v for k, v in have.items() if want.get(k) != v}
    if not diff or set(diff) - set(WIDTH_KEYS):
        return None
    cfg.model.kwargs = {**cfg.model.kwargs, **diff}
    return f"--init {path} is {cfg.model.name} with {diff}: training that shape"


def init_from(model: nn.Module, path: str) -> str:
    """Copy the tensors of checkpoint `path` whose names and shapes fit `model` (--init): of the
    same architecture, and at least half of the model's (an x2 model into x4 leaves out its
    upsampler; a model of other widths fit 1 tensor of 702, a run from random weights)."""
    source, meta = checkpoint.load_checkpoint(path)
    spec = model.upsample_spec
    if meta["arch"] != spec.arch:
        raise UserError(f"--init {path} is a {meta['arch']} checkpoint; this recipe trains {spec.arch} "
                        f"({spec.name}): give a checkpoint of {spec.arch}")
    src, own = source.state_dict(), model.state_dict()
    fit = {k: v for k, v in src.items() if k in own and v.shape == own[k].shape}
    if 2 * len(fit) < len(own):
        raise UserError(f"--init {path} fits {len(fit)} of the {len(own)} tensors of {spec.name} (its "
                        f"{meta['arch']} {meta['kwargs']} and the recipe's model differ): set the recipe's "
                        "model.kwargs to the checkpoint's, or give a checkpoint of the recipe's shape")
    model.load_state_dict(fit, strict=False)
    return f"initialised {len(fit)}/{len(own)} tensors from {path}"
