"""What a run trains: the config it resolves to (the recipe and --set, or a resumed run's own
config.toml) and the weights it starts from (--init / train.init). Apart from the loop because
it is decided once, before training, from the command line's view of the run."""

from __future__ import annotations

import sys
from pathlib import Path

from torch import nn

from ..errors import UserError
from ..models import checkpoint, registry
from . import config as config_mod

WIDTH_KEYS = ("num_feat", "mid_feat", "d_atten", "num_grow_ch")  # what `upsample prune` shrinks


def resolve_config(config: str, overrides: list[str], *, run_dir: Path, resume: bool,
                   init: str | None) -> tuple[config_mod.Config, str | None]:
    """(config, the TOML to record in a new run dir, or None when a run is resumed)."""
    if resume and (run_dir / "last_state.pt").exists():  # else check_run_dir says why not
        # a run continues with its own resolved config; --set may still change it (e.g. steps)
        if init:
            raise UserError("--init starts a new run from those weights; a resumed run continues its own "
                            "(drop --init, or start anew with --reset or another --run-dir)")
        cfg = config_mod.load_config(run_dir / "config.toml", overrides)
        check_resumable(config_mod.load_config(run_dir / "config.toml", []), cfg)
        if Path(config).is_file() and config_mod.load_config(config, overrides) != cfg:
            print(f"note: resuming with {run_dir / 'config.toml'}, which differs from "
                  f"{config}; change values with --set", file=sys.stderr)
        return cfg, None
    cfg = config_mod.load_config(config, overrides)
    if not init and cfg.train.init and not Path(cfg.train.init).is_file():
        raise UserError(f"train.init: {cfg.train.init} not found (the weights this recipe starts "
                        "from): train that stage first, or pass --init CKPT")
    if init:  # the resolved config records where the run started
        cfg.train.init = init
    if cfg.train.init:
        note = adopt_init_widths(cfg, cfg.train.init)
        if note:
            print(f"note: {note}", file=sys.stderr)
    return cfg, config_mod.to_toml(cfg)


# What --set may change when a run resumes: its length, logging, validation and speed. Everything
# else (model, data, optimizer, schedule, seed, losses) is in the saved state or decides it.
RESUMABLE = ("train.steps", "train.log_every", "train.ckpt_every", "train.threads", "train.amp",
             "train.channels_last", "train.compile", "val.", "data.workers", "data.cache_mb", "data.store_dir")


def _flat(obj, prefix: str = "") -> dict:
    if isinstance(obj, dict):
        return {k: v for key, val in obj.items() for k, v in _flat(val, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): obj}


def check_resumable(saved: config_mod.Config, cfg: config_mod.Config) -> None:
    """A UserError when `cfg` (the run's config with --set) changes what a resumed run keeps."""
    before, after = _flat(config_mod.to_dict(saved)), _flat(config_mod.to_dict(cfg))
    changed = [k for k in after if before.get(k) != after[k]
               and not any(k == r or (r.endswith(".") and k.startswith(r)) for r in RESUMABLE)]
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
