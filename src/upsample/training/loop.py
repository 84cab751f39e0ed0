"""`upsample train CONFIG`: train a registered model on HR images; one loop, top to bottom.

The loop reads as nanoGPT's: build (processes, model, data, state), step, validate, checkpoint.
It keeps the story; the pieces it calls live beside it: state.py (everything --resume restores,
saved and loaded by one code path), gan.py (the adversarial step), optim.py (optimizers,
schedulers, the clipped step), procs.py (device, DDP ranks, signals and the deadline),
validation.py (PSNR/SSIM as `upsample eval` measures), rundir.py (the run dir's rules and rank
0's files), recipe.py (the config a run resolves to, --init).

Run directory (default runs/<config stem>):
  config.toml        the resolved config (recipe + --set overrides); --resume reads it back
  last.safetensors   the weights to evaluate (EMA weights when train.ema > 0), every ckpt_every steps
  last_state.pt      everything to continue exactly: raw weights, optimizer, scheduler, GradScaler,
                     EMA, RNG states of every rank, step, epoch, best PSNR, patience counter
  best.safetensors   the weights with the best validation PSNR so far
  metrics.jsonl      one JSON object per log / validation line
  tb/                TensorBoard events: loss, lr, val PSNR/SSIM, sample images

Exactness: the training samples of step s are a pure function of (seed, s) (see `data.pairs`), so a run
stopped at a checkpoint and resumed reproduces an uninterrupted run step for step (bit for bit on
CPU). Ctrl-C or SIGTERM finishes the current step, saves and exits (status 130 / 143); after a
kill -9, `--resume` continues from the last checkpoint.

Adversarial training (ESRGAN stage 2: a [gan] section and loss.adversarial_weight > 0): each step
is one `gan_step`, the generator (weighted pixel + perceptual + relativistic average GAN loss,
discriminator frozen), then the discriminator on the detached output; each has its own optimizer,
scheduler and GradScaler, all in last_state.pt, so such a run resumes exactly too. The log adds
the loss terms and the mean discriminator logits (d_real, d_fake); `train.init` / `--init` start
the generator from the PSNR-oriented model.

Multi-process: `torchrun --nproc-per-node N -m upsample train CONFIG` runs DDP (gloo on CPU, nccl
on CUDA). Each rank draws its own samples; `data.batch_size` is per rank, so the effective batch
is batch_size x world size. Only rank 0 validates and writes files.
"""

from __future__ import annotations

import hashlib
import math
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from ..data import pairs as data, sources
from ..errors import RankZeroError, UserError
from ..media.progress import progress_bar
from ..models import checkpoint, registry
from ..runtime.hardware import hardware_name, machine_kind
from . import config as config_mod
from .batches import batches_on_device, build_pairs, pipeline_of
from .engines import DeepSpeedEngine
from .fits import check_batch_fits
from .gan import Discriminator, build_discriminator, gan_step
from .losses import PerceptualLoss, make_loss
from .optim import build_optimizer, build_scheduler, optimizer_step
from .procs import (Pace, Procs, Stop, process_start_time, said_by_rank_zero, set_torch_flags,
                    start_processes)
from .recipe import check_packaged_data, init_from, recipe_file, resolve_config
from .rundir import RunLog, check_run_dir
from .speed import (CompiledOrEager, StepModes, candidates, choose_modes, has_fast_bf16, kernels_for,
                    resumed_modes)
from .state import EMA, Sampling, TrainState, read_state_file, write_state_file
from .validation import load_val_images, validate

TRAIN_LINE_INTERVAL = 30.0  # seconds between progress lines when stderr is no terminal (a log)


def train_from_args(*, config: str, overrides: list[str], run_dir: str | None, resume: bool,
                    reset: bool, device: str | None, init: str | None,
                    max_minutes: float | None, started: float | None = None) -> int:
    """`upsample train`: resolve the config (the recipe, or a resumed run's own), then train.
    `started`: when the command began, for --max-minutes (None: the process's start)."""
    run_dir = Path(run_dir) if run_dir else Path("runs") / Path(config).stem
    try:
        recipe = recipe_file(config)
        cfg, text = resolve_config(recipe, overrides, run_dir=run_dir, resume=resume, init=init,
                                   packaged=recipe != config)
        if recipe != config:
            check_packaged_data(config, cfg, overrides)
    except UserError as exc:  # every rank of a launcher meets it alike, before they meet
        raise said_by_rank_zero(exc) from None
    peer_lost = False
    try:
        return train(cfg, run_dir, resume=resume, reset=reset, device=device,
                     init=cfg.train.init or None, config_text=text, max_minutes=max_minutes,
                     started=started if started is not None else process_start_time())
    except (RuntimeError, dist.DistError) as exc:
        peer_lost = dist.is_initialized() and is_peer_lost(exc)
        if not peer_lost:
            raise
        # the launcher now stops this process too (SIGTERM): it is ending already, with its line
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise UserError(peer_lost_line(exc, run_dir, cfg)) from None
    finally:
        if dist.is_initialized() and not peer_lost:  # with a rank gone it could wait for it
            dist.destroy_process_group()


# what gloo and NCCL say when another rank's process is gone (killed, out of memory, its machine)
PEER_LOST_SIGNS = ("Connection reset by peer", "Connection closed by peer", "Broken pipe",
                   "Connection refused", "NCCL communicator was aborted", "remote process exited",
                   "Socket Timeout", "Timed out waiting")


def is_peer_lost(exc: BaseException) -> bool:
    """Whether a collective failed because another rank of the run is gone."""
    return any(s in str(exc) for s in PEER_LOST_SIGNS)  # not any DistError: NCCL's own faults too


def peer_lost_line(exc: BaseException, run_dir: Path, cfg: config_mod.Config) -> str:
    """One line for a rank that lost the others: what happened, and how to go on."""
    why = next((s for s in PEER_LOST_SIGNS if s in str(exc)), type(exc).__name__)
    rank = dist.get_rank()
    if rank == 0 and not (run_dir / "last_state.pt").exists():  # rank 0 writes the run dir
        how = "it had saved no checkpoint yet: start it again with --reset"
    else:
        how = (f"go on from its last checkpoint (every {cfg.train.ckpt_every} steps, in {run_dir} "
               "where rank 0 runs) with the same command and --resume")
    return (f"rank {rank}: another process of this run ended or stopped answering ({why}: killed, out "
            f"of memory, or its machine went away; its own output says why); {how}")


def train(cfg: config_mod.Config, run_dir: Path, *, resume: bool = False, reset: bool = False,
          device: str | None = None, init: str | None = None, config_text: str | None = None,
          on_validate=None, max_minutes: float | None = None,
          continue_hint: str = "continue with --resume", started: float | None = None) -> int:
    """Train `cfg` in `run_dir`. `on_validate(step, val_psnr)` is called after each validation
    (single process); when it returns True the run stops there (`upsample tune` prunes trials so).
    `max_minutes`: a time-boxed chunk; the run saves and stops before that much wall time has
    passed (counted from `started`, else from the call), to be continued with --resume.
    `continue_hint`: how to go on after a signal stopped the run (`tune` has no --resume)."""
    stop = Stop(deadline=(started or time.time()) + max_minutes * 60 if max_minutes else math.inf)
    # ---------------------------------------------------------------- build
    procs = start_processes(device)
    (cfg,) = procs.from_master(cfg)  # every rank trains with rank 0's config
    if procs.engine is not None:
        cfg = procs.engine.check(cfg)  # what the launcher's engine decides of it, or refuses
    set_torch_flags(cfg, procs.dev)
    resuming, saved = open_run(run_dir, resume=resume, reset=reset, procs=procs)
    if saved and is_finished(saved, cfg):
        procs.log(finished_note(saved, cfg, run_dir))
        return 0
    model, scales, perceptual, disc = build_model(cfg, procs, init=None if resuming else init)
    check_batch_fits(networks_in_a_step(cfg, model, scales, perceptual, disc), cfg.data.batch_size,
                     cfg.train.accumulate, procs.dev, half=cfg.train.amp != "none")
    pairs, val_images, images = build_data_of_run(cfg, model.upsample_spec, scales, procs,
                                                  run_dir if resuming else None, saved)
    sampling = Sampling(steps=cfg.train.steps, batch_size=cfg.data.batch_size, scales=scales,
                        seed=cfg.train.seed, rank=procs.rank, world=procs.world, n_images=len(pairs))
    modes = step_modes(cfg, model, pairs, sampling, procs, saved)
    state = build_state(cfg, model, disc, procs, modes, sampling)
    state.images, state.pipeline = images, pipeline_of(pairs)
    if saved:
        state.load_state_dict(saved, run_dir=run_dir)
        note_changed_images(saved.get("images"), images, procs)
    batches = batches_on_device(pairs, state.sampling.batch_sampler(state.step), cfg, procs.dev,
                                modes.channels_last)
    net = wrap_for_ranks(state, cfg, procs)
    if state.deepspeed is not None and saved:
        state.deepspeed.load(run_dir, saved.get("deepspeed"))
    train_step = make_train_step(cfg, state, net, perceptual, modes)
    run_log = on_master(procs, lambda: RunLog(run_dir, cfg, resuming=resuming, reset=reset, start=state.step,
                                              config_text=config_text))
    steps, bar = cfg.train.steps, None
    sync_every = 1 if procs.dev.type == "cpu" else cfg.train.log_every  # a GPU sync costs more
    last_loss, last_terms = float("nan"), {}
    try:
        stop.catch_signals(say=procs.master)
        announce(cfg, procs, state, run_log, n_images=len(pairs), val_images=val_images,
                 scales=scales, modes=modes)
        bar = progress_bar(steps, procs.master, desc="train", unit="step", initial=state.step,
                           interval=TRAIN_LINE_INTERVAL)
        net.train()
        pace = Pace(start=state.step)
        # ------------------------------------------------------------ step
        for inp, target in batches:
            loss, parts, lr, lr_d = train_step(inp, target)
            state.step += 1
            bar.update(1)
            if state.step % cfg.train.log_every == 0 or state.step == steps:
                check_finite(state, procs)
                last_loss, last_terms = log_step(loss, parts, lr=lr, lr_d=lr_d, cfg=cfg, procs=procs,
                                                 state=state, pace=pace, run_log=run_log, bar=bar)
            # -------------------------------------------------------- validate
            if (cfg.val.every and state.step % cfg.val.every == 0) or state.step == steps:
                t_aside = time.time()
                state.finished = validation(cfg, procs, state, run_log, eval_model=to_evaluate(state),
                                            val_images=val_images, run_dir=run_dir,
                                            on_validate=on_validate)
                pace.validated(since=t_aside)
            if state.step == steps:
                state.finished = state.finished or "steps"
            # -------------------------------------------------------- checkpoint
            if pace.past_deadline(stop.deadline, val_every=cfg.val.every):
                stop.timed_out = 1  # a step, a validation and a save no longer fit before it
            halt = stop.requested(procs, state.step, sync_every)  # every rank at the same step
            halt = state.finished or halt
            if halt or state.step % cfg.train.ckpt_every == 0:
                t_aside = time.time()
                check_finite(state, procs)  # never a checkpoint of NaN weights
                save(state, cfg, procs, eval_model=to_evaluate(state), run_dir=run_dir)
                pace.saved(since=t_aside)
            if halt:
                break
    finally:
        if bar is not None:
            bar.close()
        stop.restore_signals()
        if run_log is not None:
            run_log.close()
    return summarize(cfg, procs, state, stop, pace, last_loss=last_loss, last_terms=last_terms,
                     run_dir=run_dir, max_minutes=max_minutes, continue_hint=continue_hint)


# -------------------------------------------------------------------- build


def on_master(procs: Procs, make, *, share: bool = False):
    """`make()` on rank 0, and with `share` its value on every rank (else None on the others); a
    UserError there stops every rank with its line (the others would wait in the next collective
    and die in a gloo/NCCL traceback). One collective either way."""
    value, error = None, None
    if procs.master:
        try:
            value = make()
        except UserError as exc:
            error = str(exc)
    error, shared = procs.from_master(error, value if share else None)
    if error:
        raise UserError(error) if procs.master else RankZeroError(error)
    return shared if share else value


def open_run(run_dir: Path, *, resume: bool, reset: bool, procs: Procs) -> tuple[bool, dict | None]:
    """(whether a run is resumed, its last_state.pt). Rank 0 decides and hands its decision and
    the resume state to the others (no shared filesystem needed)."""
    def decide():
        resuming = check_run_dir(run_dir, resume, reset)
        return resuming, read_state_file(run_dir) if resuming else None
    return on_master(procs, decide, share=True)


def is_finished(saved: dict, cfg: config_mod.Config) -> bool:
    """A resumed run has nothing left to do: all its steps ran, or it stopped early and still
    would: val.patience (perhaps raised with --set) is not above its validations without a gain."""
    return saved["step"] >= cfg.train.steps or (saved.get("finished") == "early stop"
                                                and 0 < cfg.val.patience <= saved["bad_vals"])


def finished_note(saved: dict, cfg: config_mod.Config, run_dir: Path) -> str:
    best = f"best val PSNR {saved['best_psnr']:.2f} dB at step {saved['best_step']}" \
        if saved["best_step"] else "no validation"
    if not saved.get("finished") and saved["step"] > cfg.train.steps:  # stopped, then --set train.steps lower
        return (f"run {run_dir} was stopped at step {saved['step']}, past train.steps {cfg.train.steps}: nothing "
                f"to train ({best}; its last steps had no final validation); give train.steps above "
                f"{saved['step']} to go on")
    return (f"run {run_dir} is finished ({saved.get('finished') or 'steps'} at step "
            f"{saved['step']}/{cfg.train.steps}; {best}); nothing to do")


def build_model(cfg: config_mod.Config, procs: Procs, *, init: str | None) -> tuple:
    """(the model, its training scales, the perceptual loss or None, the discriminator or None).
    Seeded first: the initial weights are a function of train.seed."""
    torch.manual_seed(cfg.train.seed)
    model = registry.create_model(cfg.model.name, colorspace=cfg.model.colorspace, **cfg.model.kwargs)
    spec = model.upsample_spec
    if spec.kind != "generator":
        raise UserError(f"model.name: {cfg.model.name} is a {spec.kind}, not an upscaler")
    scales = training_scales(cfg, spec)
    if init:
        procs.log(init_from(model, init))
    perceptual, disc = None, None
    if cfg.loss.perceptual.weight or cfg.gan.discriminator:
        if spec.input != "rgb":
            raise UserError(f"model.name: perceptual and adversarial losses need an RGB model; "
                            f"{cfg.model.name} works on Y")
    if cfg.loss.perceptual.weight:
        pc = cfg.loss.perceptual
        perceptual = PerceptualLoss(pc.network, pc.layer, pc.weights).to(procs.dev)
    if cfg.gan.discriminator:
        disc = build_discriminator(cfg, cfg.data.patch_size, procs.dev)
    data.check_patch_size(cfg.data.patch_size, scales, spec.pre_upsample,  # before the images are decoded
                          also=getattr(disc.model, "size_multiple", 1) if disc is not None else 1)
    return model, scales, perceptual, disc


def networks_in_a_step(cfg: config_mod.Config, model: nn.Module, scales: list, perceptual, disc) -> list:
    """(network, input shape of one patch) of each network a training step runs backward through."""
    spec, hr = model.upsample_spec, cfg.data.patch_size
    side = hr if spec.pre_upsample else hr // int(min(scales))
    found = [(model, (spec.channels, side, side))]
    found += [(net, (3, hr, hr)) for net in (perceptual and perceptual.features, disc and disc.model)
              if net is not None]
    return found


def training_scales(cfg: config_mod.Config, spec) -> list:
    if spec.scale is None:
        if not cfg.model.scales:
            raise UserError(f"model.scales: {cfg.model.name} works at any scale; list the scales "
                            "to train on, e.g. [2, 3, 4]")
        return list(cfg.model.scales)
    if cfg.model.scales and cfg.model.scales != [spec.scale]:
        raise UserError(f"model.scales: {cfg.model.name} is a x{spec.scale} model, got "
                        f"{cfg.model.scales}")
    return [spec.scale]


def pair_spec(cfg: config_mod.Config, spec, scales: list) -> data.PairSpec:
    """What a training pair is: the recipe's patch, augmentation and degradation for `spec`."""
    d = cfg.degrade
    return data.PairSpec(
        patch=cfg.data.patch_size, scales=scales, y_channel=spec.input == "y",
        pre_upsample=spec.pre_upsample, flip=cfg.data.flip, rot90=cfg.data.rot90,
        kind=d.kind, blur_sigma=tuple(d.blur_sigma), noise_prob=d.noise_prob,
        noise_sigma=tuple(d.noise_sigma), jpeg_prob=d.jpeg_prob, jpeg_quality=tuple(d.jpeg_quality),
        dropout_prob=d.dropout_prob, dropout_holes=tuple(d.dropout_holes),
        dropout_size=tuple(d.dropout_size))


def images_of(train_files: list[Path], val_files: list[Path]) -> dict:
    """The counts of the training and validation images and a digest of their names and sizes
    (not paths: a run dir and its images moved elsewhere are the same run)."""
    digest = hashlib.sha256()
    for group in (train_files, val_files):
        for f in sorted(group):
            digest.update(f"{f.name}\0{f.stat().st_size}\n".encode("utf-8", "surrogateescape"))
        digest.update(b"--\n")
    return {"train": len(train_files), "val": len(val_files), "digest": digest.hexdigest()[:16]}


def note_changed_images(before: dict | None, now: dict, procs: Procs) -> None:
    """A note when a resumed run's images are not those it was trained on: files added, removed or
    replaced in its folders. It goes on (a user may mean it), but it is no exact resume, and the
    validation PSNRs before and after are of other images."""
    if before is None or before == now:
        return
    counts = ("" if (before["train"], before["val"]) == (now["train"], now["val"]) else
              f" ({before['train']} training and {before['val']} validation images then, "
              f"{now['train']} and {now['val']} now)")
    procs.log(f"note: the images of this run changed since it was saved{counts}: it goes on with them, "
              "which is no exact resume, and its validation PSNRs before and after are of other images")


def build_data(cfg: config_mod.Config, spec, scales: list, procs: Procs, saved: dict | None = None) -> tuple:
    """(the training pairs, made on the fly from the training images; the validation images,
    on rank 0 only, which validates; `images_of` them). An image that cannot be read stops the
    run, naming it and the commands that find and move aside every such file."""
    train_files, val_files = sources.training_images(
        cfg.data.train, val_list=cfg.data.val_list, val_fraction=cfg.data.val_fraction,
        seed=cfg.train.seed, video_every=cfg.data.video_every, max_images=cfg.data.max_images,
        progress=procs.master, split_seed=config_mod.split_seed(cfg))
    try:
        pairs = build_pairs(cfg, train_files, pair_spec(cfg, spec, scales), procs.dev,
                            progress=procs.master, log=procs.log, saved=saved)
        val_images = on_master(procs, lambda: load_val_images(val_files, cfg.val, scales)) or []
    except UserError as exc:
        if not str(exc).startswith("cannot read image"):
            raise
        raise UserError(f"{exc}; `upsample data check FOLDER` lists the unreadable files of a folder, "
                        "`upsample data clean FOLDER` moves them aside") from None
    if pairs.skipped:
        need = max(pairs.spec.core(s) for s in pairs.spec.scales)
        procs.log(f"note: {pairs.skipped} training images are smaller than the patch ({need}x{need} px) and are "
                  f"not used; `upsample data check FOLDER --min-size {need}` names them")
    if not val_files and cfg.val.patience:  # nothing is validated, so nothing stops the run early
        procs.log(f"note: val.patience {cfg.val.patience} does nothing without validation images: the "
                  "run trains all its train.steps; hold some out (data.val_fraction or data.val_list)")
    if not val_files and cfg.data.val_fraction and not cfg.data.val_list:
        # a few images: the hash split (a fraction of each image's chance) may hold none out
        procs.log(f"note: data.val_fraction {cfg.data.val_fraction:g} held out none of the "
                  f"{len(train_files)} training images: no validation and no best.safetensors (the "
                  "weights are in last.safetensors); raise data.val_fraction or list images in data.val_list")
    return pairs, val_images, images_of(train_files, val_files)


def build_data_of_run(cfg: config_mod.Config, spec, scales: list, procs: Procs, resumed: Path | None,
                      saved: dict | None = None) -> tuple:
    """build_data (for a resumed run, on the pipeline of its state `saved`), and for a resumed run
    whose images are not where it was trained (its run dir copied to another machine or folder),
    how to point it at them."""
    try:
        return build_data(cfg, spec, scales, procs, saved)
    except UserError as exc:
        if resumed is None or not str(exc).startswith(("data.train:", "data.val_list:")) or \
                "not found" not in str(exc):
            raise
        raise UserError(f"{exc}; a resumed run reads the paths of {resumed / 'config.toml'}, as it "
                        "was trained: edit them there to where the same images are now (its split and "
                        "samples follow each folder's name, not its path)") from None


def step_modes(cfg: config_mod.Config, model: nn.Module, pairs, sampling: Sampling, procs: Procs,
               saved: dict | None) -> StepModes:
    """How the step computes: what the run being resumed chose (on this kind of machine, where
    its "auto" settings offer it), else the recipe's settings with "auto" ones decided by timing
    (rank 0 times, every rank takes its choice)."""
    here = machine_kind(procs.dev)
    offered = candidates(cfg.train, procs.dev, model)
    if saved and saved.get("modes"):
        kept = resumed_modes(cfg.train, saved["modes"])
        there = saved.get("machine", here)  # (a state from before machines were recorded: here)
        if there == here and kept in offered:
            return kept
        why = (f"this run chose {kept.label()} on {there}; resumed on {here}" if there != here else
               f"this run computed in {kept.label()}, which its \"auto\" settings do not offer on {here}")
        procs.log(f"note: {why}, " + ("they are timed again" if len(offered) > 1 else
                                      f"it goes on in {offered[0].label()}"))
    if cfg.train.amp == "bf16" and procs.dev.type == "cpu" and not has_fast_bf16(procs.dev):
        procs.log(f"note: train.amp = \"bf16\" on {here}, a CPU without bf16 units: torch emulates it, "
                  "several times slower than fp32 (train.amp = \"auto\" trains in fp32 on such a CPU)")
    if len(offered) == 1:
        return offered[0]
    modes = None
    if procs.master:
        keys = next(iter(sampling.batch_sampler(0)))
        sample = pairs.make_batch([k for k, _ in keys[:cfg.data.batch_size // cfg.train.accumulate]],
                                  keys[0][1])
        modes = choose_modes(cfg, model, sample, procs.dev, log=procs.log)
    (modes,) = procs.from_master(modes)
    return modes


def build_state(cfg: config_mod.Config, model: nn.Module, disc: Discriminator | None, procs: Procs,
                modes: StepModes, sampling: Sampling) -> TrainState:
    """The model on its device with its optimizer, scheduler, GradScaler and EMA: a new run's
    state, which `load_state_dict` turns into a resumed one."""
    model.to(procs.dev)
    if modes.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = build_optimizer(cfg.optim, model.parameters())
    return TrainState(
        model=model, opt=opt, sched=build_scheduler(cfg.sched, opt, cfg.train.steps),
        scaler=torch.amp.GradScaler(procs.dev.type, enabled=modes.amp_dtype is torch.float16),
        ema=EMA(model, cfg.train.ema) if cfg.train.ema else None, gan=disc, sampling=sampling,
        device=procs.dev, modes=modes,
        deepspeed=procs.engine if isinstance(procs.engine, DeepSpeedEngine) else None)


def wrap_for_ranks(state: TrainState, cfg: config_mod.Config, procs: Procs) -> nn.Module:
    """The network the step runs: the model, under DDP in its wrapper (the discriminator gets
    its DDP wrapper too), or DeepSpeed's engine. Compiling is the step's (make_train_step)."""
    if state.deepspeed is not None:
        return state.deepspeed.wrap(state.model, state.opt)
    ids = [procs.dev] if procs.dev.type == "cuda" else None
    ddp = procs.engine.wrap if procs.engine is not None else (  # accelerate launch: its wrapper
        lambda m: nn.parallel.DistributedDataParallel(m, device_ids=ids))
    net = ddp(state.model) if procs.ddp else state.model
    if state.gan is not None and procs.ddp:
        state.gan.net = ddp(state.gan.model)
    return net


def announce(cfg: config_mod.Config, procs: Procs, state: TrainState, run_log: RunLog | None, *,
             n_images: int, val_images: list, scales: list, modes: StepModes) -> None:
    """The run's first lines: what it trains and where, and the bicubic baseline of validation."""
    start = state.step
    images = f"{n_images} image{'' if n_images == 1 else 's'}"
    held = state.images["val"]
    val = (f"{len(val_images)} for validation" if held <= len(val_images) else  # the rest: in neither
           f"{len(val_images)} of the {held} held out validated: val.max_images")
    procs.log(f"training {cfg.model.name} x{'/'.join(map(str, scales))} on {images} "
              f"({val}), {cfg.train.steps} steps of "
              f"{cfg.data.batch_size}x{procs.world} patches of {cfg.data.patch_size}px, "
              f"{procs.dev.type}, {modes.label()}"
              f"{', ' + procs.engine.describe() if procs.engine is not None else ''}"
              f"{', resuming at step ' + str(start) if start else ''}")
    if procs.master:
        procs.log(f"run dir {run_log.run_dir}: checkpoints, config.toml, metrics.jsonl "
                  f"(TensorBoard: tensorboard --logdir {run_log.run_dir / 'tb'})")
    if state.gan is not None and not start and not cfg.train.init:
        weak = (f"; from scratch, with a pixel loss of weight {cfg.loss.pixel_weight:g}, the generator may not "
                "even learn the colours" if cfg.loss.pixel_weight < 0.1 else "")
        procs.log("note: this adversarial stage starts from random weights: ESRGAN starts it from a "
                  f"PSNR-trained {cfg.model.name} (train.init or --init CKPT){weak}")
    if procs.master and not start:  # where the run trains: the shipped log summary quotes it
        run_log.record({"step": 0, "hardware": hardware_name(procs.dev, cfg.train.threads),
                        "world": procs.world, "torch": torch.__version__})
    if procs.master and val_images:
        base = validate(None, val_images, scales, procs.dev)
        procs.log(f"validation baseline: bicubic PSNR {base['psnr']:.2f} dB, SSIM {base['ssim']:.4f}")
        if not start:
            run_log.record({"step": 0, "val_bicubic_psnr": base["psnr"], "val_bicubic_ssim": base["ssim"]})


# -------------------------------------------------------------------- step


def make_train_step(cfg: config_mod.Config, state: TrainState, net: nn.Module, perceptual,
                    modes: StepModes):
    """The step: forward + loss (compiled when `modes.compile`), backward over `train.accumulate`
    micro-batches, update (and the discriminator's in a GAN run), EMA, scheduler. Returns
    step(inp, target) -> (loss, {term: 0-d tensor}, lr, lr_d); nothing in it waits on the device."""
    model, disc, dev, amp_dtype = state.model, state.gan, state.device, modes.amp_dtype
    in_dtype = state.deepspeed.input_dtype if state.deepspeed is not None else None  # its 16-bit net
    hr_input = getattr(model, "trains_on_hr", False)  # joint down+up: HR in, HR out
    criterion = make_loss(cfg.loss.name, cfg.loss.eps)

    def amp():
        return torch.autocast(dev.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)

    def content(pred, target):
        """pixel_weight x pixel loss (+ perceptual.weight x perceptual loss) and, when more than
        the pixel loss is trained on, the terms to log."""
        pixel = criterion(pred.float(), target)
        loss = cfg.loss.pixel_weight * pixel
        if perceptual is None and disc is None:
            return loss, {}
        terms = {"pixel": pixel.detach()}
        if perceptual is not None:
            with amp():
                percep = perceptual(pred, target)
            loss = loss + cfg.loss.perceptual.weight * percep
            terms["perceptual"] = percep.detach()
        return loss, terms

    def forward_loss(inp, target):
        x = target if hr_input else inp  # a joint down+up model trains on HR alone
        if in_dtype is not None:
            x = x.to(in_dtype)
        with amp():
            pred = net(x, hr=True) if hr_input else net(x)
        loss, parts = content(pred, target)
        if hr_input and model.aux_loss is not None:  # a joint model's rate term
            loss = loss + model.aux_loss
        return loss, parts

    forward = CompiledOrEager(forward_loss) if modes.compile else forward_loss
    # the GAN step calls the network itself, not `forward`: compile it there too
    generator = CompiledOrEager(net) if modes.compile and disc is not None else net

    def g_update(loss):
        state.opt.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        return optimizer_step(state.opt, state.scaler, model, cfg.optim)

    def step(inp, target):
        with kernels_for(modes):  # VapSR's depth-wise weight gradients compiled, where chosen
            lr_d = None
            if state.deepspeed is not None:
                loss, parts, lr = deepspeed_step(forward, inp, target, cfg.train.accumulate, state)
            elif disc is None:
                loss, parts = accumulated_backward(forward, inp, target, cfg.train.accumulate, state)
                lr = optimizer_step(state.opt, state.scaler, model, cfg.optim)
            else:
                loss, parts, lr = gan_step(generator, inp, target, content=lambda p: content(p, target),
                                           adv_weight=cfg.loss.adversarial_weight, g_update=g_update,
                                           disc=disc, amp=amp)
                lr_d = disc.opt.param_groups[0]["lr"]
                if disc.sched is not None:
                    disc.sched.step()
        if state.ema is not None:
            state.ema.update(state.weights())
        if state.sched is not None and cfg.sched.name != "plateau":
            state.sched.step()
        return loss, parts, lr, lr_d

    return step


def micro_batches(forward_loss, inp: torch.Tensor, target: torch.Tensor, k: int,
                  backward) -> tuple[torch.Tensor, dict]:
    """`forward_loss` on `k` micro-batches of the batch (the whole batch when k = 1, for batches
    that do not fit at once), `backward(loss)` after each; returns the batch's loss and terms."""
    if k == 1:
        loss, parts = forward_loss(inp, target)
        backward(loss)
        return loss.detach(), parts
    total, terms = 0.0, {}
    for x, y in zip(inp.chunk(k), target.chunk(k)):
        loss, parts = forward_loss(x, y)
        backward(loss)
        total = total + loss.detach() / k
        terms = {n: terms.get(n, 0.0) + v / k for n, v in parts.items()}
    return total, terms


def accumulated_backward(forward_loss, inp: torch.Tensor, target: torch.Tensor, k: int,
                         state: TrainState) -> tuple[torch.Tensor, dict]:
    """The gradients of the batch's mean loss, summed over its `k` micro-batches."""
    state.opt.zero_grad(set_to_none=True)
    return micro_batches(forward_loss, inp, target, k, lambda loss: state.scaler.scale(loss / k).backward())


def deepspeed_step(forward_loss, inp: torch.Tensor, target: torch.Tensor, k: int,
                   state: TrainState) -> tuple[torch.Tensor, dict, float]:
    """The step under DeepSpeed, one backward and engine step per micro-batch (the engine divides
    the loss by `k` and updates at the k-th); returns the batch's loss, terms and the lr used."""
    lr = state.opt.param_groups[0]["lr"]
    return (*micro_batches(forward_loss, inp, target, k, state.deepspeed.backward_step), lr)


class Diverged(UserError):
    """The weights stopped being finite (`check_finite`); `upsample tune` prunes such a trial."""


def check_finite(state: TrainState, procs: Procs) -> None:
    """Stop a run whose weights are no longer finite (it diverged: it went on to its end on NaN,
    and saved them), before they are logged as progress or saved; every rank stops together.
    The weights, not the loss: fp16 AMP skips a step of overflowing loss and goes on."""
    finite = torch.stack([torch.isfinite(p).all() for p in state.model.parameters()]).all()
    bad = (~finite).to(torch.int32).reshape(1)
    if procs.ddp:
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    if bad.item():
        raise Diverged(f"training diverged: the weights are not finite (NaN or inf) at step {state.step}; "
                        "the checkpoints saved before are kept. Go on from the last in fp32 with --resume "
                        "--set train.amp=none, or start again with a lower optim.lr or optim.clip (e.g. 0.1): "
                        "--reset, or another --run-dir with --init of its last.safetensors")


def log_step(loss, parts: dict, *, lr: float, lr_d: float | None, cfg: config_mod.Config,
             procs: Procs, state: TrainState, pace: Pace, run_log: RunLog | None, bar) -> tuple:
    """The loss and its terms (means over the ranks) with the lr to metrics.jsonl, TensorBoard
    and the progress bar; returns (loss, terms) for the summary."""
    loss_t = torch.stack([loss.detach().float(), *(v.float() for v in parts.values())])
    if procs.ddp:
        dist.all_reduce(loss_t)
        loss_t /= procs.world
    value, *terms = loss_t.tolist()
    terms = dict(zip(parts, terms))
    if lr_d is not None:
        terms["lr_d"] = lr_d
    if procs.master:
        step = state.step
        pps, elapsed = pace.since_log(step, cfg.train.log_every, cfg.data.batch_size * procs.world)
        run_log.record({"step": step, "epoch": state.sampling.epoch(step), "loss": value, **terms,
                        "lr": lr, "patches_per_s": round(pps, 1), "time": round(elapsed, 3)})
        run_log.writer.add_scalar("train/loss", value, step)
        for k, v in terms.items():
            run_log.writer.add_scalar(f"train/{k}", v, step)
        run_log.writer.add_scalar("train/lr", lr, step)
        run_log.writer.add_scalar("train/patches_per_s", pps, step)
        bar.set_postfix(loss=f"{value:.4g}", lr=f"{lr:.2g}", refresh=False)
    return value, terms


# -------------------------------------------------------------------- validate


def validation(cfg: config_mod.Config, procs: Procs, state: TrainState, run_log: RunLog | None, *,
               eval_model: nn.Module, val_images: list, run_dir: Path, on_validate) -> str | None:
    """Rank 0 validates; every rank keeps the same best PSNR and patience count from it (and
    steps a plateau scheduler on it). Returns why training ends here, or None."""
    v = validate(eval_model, val_images, state.sampling.scales, procs.dev) \
        if procs.master and val_images else None
    (psnr,) = procs.from_master(v["psnr"] if v else None)
    if psnr is None:
        return None
    improved = psnr > state.best_psnr
    if improved:
        state.best_psnr, state.best_step, state.bad_vals = psnr, state.step, 0
    else:
        state.bad_vals += 1
    if procs.master:
        report_validation(v, cfg, run_log, step=state.step, improved=improved,
                          eval_model=eval_model, run_dir=run_dir)
    if state.sched is not None and cfg.sched.name == "plateau":
        state.sched.step(psnr)
    finished = None
    if cfg.val.patience and state.bad_vals >= cfg.val.patience:
        finished = "early stop"
    if on_validate is not None and on_validate(state.step, psnr):
        finished = "stopped by the caller"
    return finished


def report_validation(v: dict, cfg: config_mod.Config, run_log: RunLog, *, step: int,
                      improved: bool, eval_model: nn.Module, run_dir: Path) -> None:
    """best.safetensors on a new best; the scores to metrics.jsonl, TensorBoard and stderr."""
    if improved:
        checkpoint.save_checkpoint(
            eval_model, run_dir / "best.safetensors", config=config_mod.to_dict(cfg),
            extra={"step": step, "val_psnr": v["psnr"], "val_ssim": v["ssim"]})
    run_log.record({"step": step, "val_psnr": v["psnr"], "val_ssim": v["ssim"], "best": improved})
    run_log.writer.add_scalar("val/psnr", v["psnr"], step)
    run_log.writer.add_scalar("val/ssim", v["ssim"], step)
    for i, img in enumerate(v["samples"][:cfg.val.samples]):
        run_log.writer.add_image(f"val/sample{i}", img, step, dataformats="HWC")
    tqdm.write(f"step {step}: val PSNR {v['psnr']:.2f} dB, SSIM {v['ssim']:.4f}"
               f"{' (best)' if improved else ''}", file=sys.stderr)


# -------------------------------------------------------------------- checkpoint


def to_evaluate(state: TrainState) -> nn.Module:
    """The network validation scores and checkpoints hold: the EMA copy, or the trained network
    in fp32 (collective under DeepSpeed's 16-bit modes: an fp32 copy of its master weights)."""
    if state.ema is not None:
        return state.ema.model
    return state.deepspeed.eval_model(state.model) if state.deepspeed is not None else state.model


def save(state: TrainState, cfg: config_mod.Config, procs: Procs, *, eval_model: nn.Module,
         run_dir: Path) -> None:
    """last.safetensors (weights to evaluate) then last_state.pt (what --resume reads); under
    DeepSpeed its checkpoint first, which last_state.pt then names."""
    if state.deepspeed is not None:
        state.deepspeed.save(run_dir, state.step)
    sd = state.state_dict()  # on every rank: it gathers their RNG states
    if procs.master:
        extra = {"step": state.step, "best_val_psnr": state.best_psnr if state.best_step else None}
        try:
            checkpoint.save_checkpoint(eval_model, run_dir / "last.safetensors",
                                       config=config_mod.to_dict(cfg), extra=extra)
            write_state_file(sd, run_dir)
        except OSError as exc:  # a full disk, a run dir made read-only or gone: each file is whole
            kept = ("its last_state.pt, the checkpoint before, is whole: make room (or the folder "
                    "writable), then continue with --resume" if (run_dir / "last_state.pt").exists()
                    else "no checkpoint was saved yet: make room (or the folder writable) and start again")
            raise UserError(f"cannot save the checkpoint of step {state.step} in {run_dir} "
                            f"({exc.strerror or exc}); {kept}") from None
    if state.deepspeed is not None:
        state.deepspeed.drop_older(run_dir)


def summarize(cfg: config_mod.Config, procs: Procs, state: TrainState, stop: Stop, pace: Pace, *,
              last_loss: float, last_terms: dict, run_dir: Path, max_minutes: float | None,
              continue_hint: str = "continue with --resume") -> int:
    """The last line (why the run stopped and how it went) and the exit status: 128 + signal
    when a signal stopped it, else 0."""
    step, steps, finished = state.step, cfg.train.steps, state.finished
    elapsed, pps = pace.overall(step, cfg.data.batch_size * procs.world)
    if stop.signum and not finished:
        name = signal.Signals(stop.signum).name
        procs.log(f"stopped by {name} at step {step}/{steps}; saved {run_dir / 'last_state.pt'}; "
                  f"{continue_hint}")
        return 128 + stop.signum
    if stop.timed_out and not finished:
        procs.log(f"time limit ({max_minutes:g} min) at step {step}/{steps}; saved "
                  f"{run_dir / 'last_state.pt'} ({pps:.0f} patches/s); continue with --resume")
        return 0
    if procs.master:
        best = f"best val PSNR {state.best_psnr:.2f} dB at step {state.best_step} -> " \
               f"{run_dir / 'best.safetensors'}" if state.best_step else \
               f"no validation; weights -> {run_dir / 'last.safetensors'}"
        d_loss = f", D loss {last_terms['d_loss']:.4g}" if "d_loss" in last_terms else ""
        logged = f", loss {last_loss:.4g}{d_loss}" if math.isfinite(last_loss) else ""  # none logged yet
        print(f"{finished}: step {step}/{steps} in {elapsed:.1f}s ({pps:.0f} patches/s){logged}; {best}")
    return 0
