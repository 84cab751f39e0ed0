"""`upsample train CONFIG`: train a registered model on HR images; one loop, top to bottom.

Run directory (default runs/<config stem>):
  config.toml        the resolved config (recipe + --set overrides); --resume reads it back
  last.safetensors   the weights to evaluate (EMA weights when train.ema > 0), every ckpt_every steps
  last_state.pt      everything to continue exactly: raw weights, optimizer, scheduler, GradScaler,
                     EMA, RNG states of every rank, step, epoch, best PSNR, patience counter
  best.safetensors   the weights with the best validation PSNR so far
  metrics.jsonl      one JSON object per log / validation line
  tb/                TensorBoard events: loss, lr, val PSNR/SSIM, sample images

Exactness: the training samples of step s are a pure function of (seed, s) (see `data`), so a run
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

import argparse
import copy
import json
import math
import os
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from ..models import checkpoint, registry
from . import config as config_mod
from ..data import pairs as data
from ..evaluation import evaluate
from ..errors import UserError
from ..runtime.hardware import hardware_name
from ..media.imageio import atomic_output, read_rgb
from .losses import PerceptualLoss, make_loss, relativistic_loss
from ..inference.upscaler import BicubicUpscaler, ModelUpscaler

RUN_FILES = ("config.toml", "last.safetensors", "last_state.pt", "best.safetensors", "metrics.jsonl")


class EMA:
    """Exponential moving average of a model's weights: ema = decay * ema + (1 - decay) * w."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for e, w in zip(self.model.state_dict().values(), model.state_dict().values()):
            if e.dtype.is_floating_point:
                e.lerp_(w, 1.0 - self.decay)
            else:
                e.copy_(w)


def build_optimizer(cfg: config_mod.OptimConfig, params) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def build_scheduler(cfg: config_mod.SchedConfig, opt, steps: int):
    """Stepped once per training step, except plateau: once per validation, on val PSNR."""
    if cfg.name == "step":
        return torch.optim.lr_scheduler.StepLR(opt, cfg.step_size, cfg.gamma)
    if cfg.name == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(opt, cfg.milestones, cfg.gamma)
    if cfg.name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, cfg.eta_min)
    if cfg.name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, "max", cfg.factor, cfg.patience)
    return None


def optimizer_step(opt, scaler, model: nn.Module, cfg: config_mod.OptimConfig) -> float:
    """Clip (when configured) and apply the gradients now in `model`; returns the lr used."""
    if cfg.clip:
        scaler.unscale_(opt)
        limit = cfg.clip / opt.param_groups[0]["lr"] if cfg.clip_adjustable else cfg.clip
        if cfg.clip_type == "norm":
            nn.utils.clip_grad_norm_(model.parameters(), limit)
        else:
            nn.utils.clip_grad_value_(model.parameters(), limit)
    lr = opt.param_groups[0]["lr"]
    scaler.step(opt)
    scaler.update()
    return lr


def gan_step(net, inp, target, content, adv_weight: float, g_update, d, amp) -> tuple:
    """One ESRGAN step, as BasicSR's ESRGANModel. Generator: `content(pred)` (weighted pixel +
    perceptual loss) + adv_weight x the relativistic average loss, with the discriminator frozen;
    `g_update(loss)` applies it and returns the lr. Then the discriminator `d` (a dict: model,
    net (= model, or its DDP wrapper), opt, scaler, cfg) on the real patches and the detached
    output, forward/backward twice (DDP allows no second forward before a backward): half the
    relativistic loss each. Returns (generator loss, {term: 0-d tensor}, generator lr)."""
    with amp():
        pred = net(inp)
    loss, parts = content(pred)
    d["model"].requires_grad_(False)
    with amp():
        real, fake = d["model"](target).detach(), d["model"](pred)
    parts["g_adv"] = (relativistic_loss(real, fake, False) + relativistic_loss(fake, real, True)) / 2
    loss = loss + adv_weight * parts["g_adv"]
    lr = g_update(loss)
    d["model"].requires_grad_(True)

    pred, opt, scaler = pred.detach(), d["opt"], d["scaler"]
    opt.zero_grad(set_to_none=True)
    with amp():
        with torch.no_grad():
            fake_ref = d["net"](pred)
        real = d["net"](target)
    l_real = 0.5 * relativistic_loss(real, fake_ref, True)
    scaler.scale(l_real).backward()
    with amp():
        fake = d["net"](pred)
    l_fake = 0.5 * relativistic_loss(fake, real.detach(), False)
    scaler.scale(l_fake).backward()
    optimizer_step(opt, scaler, d["model"], d["cfg"].optim)
    parts.update(d_loss=(l_real + l_fake).detach(), d_real=real.detach().float().mean(),
                 d_fake=fake.detach().float().mean())
    return loss, parts, lr


def build_discriminator(cfg: config_mod.Config, patch: int, dev) -> dict:
    """The [gan] discriminator with its optimizer, scheduler and GradScaler (see gan_step)."""
    model = registry.create_model(cfg.gan.discriminator, **cfg.gan.kwargs)
    if model.upsample_spec.kind != "discriminator":
        raise UserError(f"gan.discriminator: {cfg.gan.discriminator} is not a discriminator; see "
                        "`upsample models --all`")
    size = getattr(model, "input_size", None)
    if size and size != patch:
        raise UserError(f"gan.discriminator: {cfg.gan.discriminator} takes {size}x{size} patches; set "
                        f"data.patch_size = {size}")
    model.to(dev).train()
    opt = build_optimizer(cfg.gan.optim, model.parameters())
    return {"model": model, "net": model, "opt": opt, "cfg": cfg.gan,
            "sched": build_scheduler(cfg.gan.sched, opt, cfg.train.steps),
            "scaler": torch.amp.GradScaler(dev.type, enabled=cfg.train.amp == "fp16")}


def atomic_torch_save(obj, path: Path) -> None:
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def rng_states(device: torch.device) -> dict:
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def set_rng_states(st: dict, device: torch.device) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"], device)


def init_from(model: nn.Module, path: str) -> str:
    """Copy the tensors of checkpoint `path` whose names and shapes fit `model` (--init)."""
    src = checkpoint.load_checkpoint(path)[0].state_dict()
    own = model.state_dict()
    fit = {k: v for k, v in src.items() if k in own and v.shape == own[k].shape}
    if not fit:
        raise UserError(f"--init {path}: no tensor of it fits {model.upsample_spec.name}")
    model.load_state_dict(fit, strict=False)
    return f"initialised {len(fit)}/{len(own)} tensors from {path}"


WIDTH_KEYS = ("num_feat", "mid_feat", "d_atten", "num_grow_ch")  # what `upsample prune` shrinks


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


@torch.no_grad()
def validate(model: nn.Module | None, images: list[np.ndarray], scales: list[int], device) -> dict:
    """Mean PSNR/SSIM (Y, border = scale) over images and scales, exactly as `upsample eval`.
    With model None it measures bicubic, the baseline every validation is read against."""
    was_training = model.training if model is not None else False
    if model is not None:
        model.eval()
    psnrs, ssims, samples = [], [], []
    for s in scales:
        up = (BicubicUpscaler(s, device) if model is None else
              ModelUpscaler(model, model, scale=s, name="validation", backend="torch", device=device))
        down = None
        if getattr(model, "trains_on_hr", False):  # a joint model makes its own LR
            from ..inference.downscale import LearnedDownscaler
            down = LearnedDownscaler(model, "validation", device)
        for hr in images:
            p, q, out = evaluate.evaluate_image(up, hr, s, int(math.ceil(s)), True, downscaler=down)
            psnrs.append(p)
            ssims.append(q)
            samples.append(out)
    if model is not None:
        model.train(was_training)
    return {"psnr": float(np.mean(psnrs)), "ssim": float(np.mean(ssims)), "samples": samples}


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    if not size:
        return img
    h, w = img.shape[:2]
    y, x = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return img[y:y + size, x:x + size]


def check_run_dir(run_dir: Path, resume: bool, reset: bool) -> bool:
    """True when there is a run to resume. Raises for a used run dir without --resume/--reset."""
    used = run_dir.is_dir() and any((run_dir / f).exists() for f in RUN_FILES)
    if resume:
        if not (run_dir / "last_state.pt").exists():
            raise UserError(f"--resume: {run_dir} has no last_state.pt to resume from; start "
                            "without --resume")
        return True
    if used and not reset:
        raise UserError(f"run dir {run_dir} already holds a run: use --resume to continue it, "
                        "--reset to start over, or --run-dir for a new one")
    return False


def reset_run_dir(run_dir: Path) -> None:
    import shutil
    for f in RUN_FILES:
        (run_dir / f).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "tb", ignore_errors=True)


def one_thread_batches(loader):
    """Batches made in this process with one torch thread: the data pipeline's many small ops
    run several times faster than when they wait on a thread pool sized for the model."""
    it = iter(loader)
    while True:
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            batch = next(it)
        except StopIteration:
            return
        finally:
            torch.set_num_threads(n)
        yield batch


def _leave_signals_to_main(_worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C and SIGTERM to the main process, which saves and stops
    cleanly: a terminal's Ctrl-C, `kill -- -PGID` and batch schedulers (Slurm) signal the whole
    process group, and a worker that died of it made the main process fail without saving.
    Workers still end with the main process (PyTorch's watchdog) and when it shuts them down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def train(cfg: config_mod.Config, run_dir: Path, *, resume: bool = False, reset: bool = False,
          device: str | None = None, init: str | None = None, config_text: str | None = None,
          on_validate=None, max_minutes: float | None = None) -> int:
    """Train `cfg` in `run_dir`. `on_validate(step, val_psnr)` is called after each validation
    (single process); when it returns True the run stops there (`upsample tune` prunes trials so).
    `max_minutes`: a time-boxed chunk; the run saves and stops before that much wall time has
    passed (counted from the call), to be continued with --resume."""
    started = time.time()
    # ---------------------------------------------------------------- processes and device
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    try:
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise UserError(f"--device must be cpu or cuda, got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA GPU is available to torch; use --device cpu")
        if world > 1 or dev.index is None:
            dev = torch.device("cuda", local_rank if world > 1 else 0)
        torch.cuda.set_device(dev)
    ddp = world > 1
    if ddp:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        box = [cfg]  # every rank trains with rank 0's config
        dist.broadcast_object_list(box, src=0)
        cfg = box[0]
    master = rank == 0
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = not cfg.train.deterministic
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True)
    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.train.amp]
    if amp_dtype is torch.float16 and dev.type != "cuda":
        raise UserError("train.amp = fp16 needs CUDA; use bf16 on the CPU")
    log = (lambda msg: print(msg, file=sys.stderr)) if master else (lambda msg: None)

    # ---------------------------------------------------------------- run dir: rank 0 decides
    # and hands its decision and the resume state to the others (no shared filesystem needed)
    error, resuming, state = None, False, None
    if master:
        try:
            resuming = check_run_dir(run_dir, resume, reset)
            if resuming:
                state = torch.load(run_dir / "last_state.pt", map_location="cpu", weights_only=False)
        except UserError as exc:
            error = str(exc)
    if ddp:
        box = [error, resuming, state]
        dist.broadcast_object_list(box, src=0)
        error, resuming, state = box
    if error:
        raise UserError(error)
    if state and (state["step"] >= cfg.train.steps
                  or (state.get("finished") == "early stop" and cfg.val.patience)):
        best = f"best val PSNR {state['best_psnr']:.2f} dB at step {state['best_step']}" \
            if state["best_step"] else "no validation"
        log(f"run {run_dir} is finished ({state.get('finished') or 'steps'} at step "
            f"{state['step']}/{cfg.train.steps}; {best}); nothing to do")
        return 0

    # ---------------------------------------------------------------- model
    torch.manual_seed(cfg.train.seed)
    model = registry.create_model(cfg.model.name, **cfg.model.kwargs)
    spec = model.upsample_spec
    hr_input = getattr(model, "trains_on_hr", False)  # joint down+up: HR in, HR out
    if spec.kind != "generator":
        raise UserError(f"model.name: {cfg.model.name} is a {spec.kind}, not an upscaler")
    if spec.scale is None:
        if not cfg.model.scales:
            raise UserError(f"model.scales: {cfg.model.name} works at any scale; list the scales "
                            "to train on, e.g. [2, 3, 4]")
        scales = list(cfg.model.scales)
    else:
        if cfg.model.scales and cfg.model.scales != [spec.scale]:
            raise UserError(f"model.scales: {cfg.model.name} is a x{spec.scale} model, got "
                            f"{cfg.model.scales}")
        scales = [spec.scale]
    if init and not resuming:
        log(init_from(model, init))
    perceptual, disc = None, None
    if cfg.loss.perceptual.weight or cfg.gan.discriminator:
        if spec.input != "rgb":
            raise UserError(f"model.name: perceptual and adversarial losses need an RGB model; "
                            f"{cfg.model.name} works on Y")
    if cfg.loss.perceptual.weight:
        pc = cfg.loss.perceptual
        perceptual = PerceptualLoss(pc.network, pc.layer, pc.weights).to(dev)
    if cfg.gan.discriminator:
        disc = build_discriminator(cfg, cfg.data.patch_size, dev)

    # ---------------------------------------------------------------- data
    train_files, val_files = data.train_val_files(cfg.data.train, cfg.data.val_list,
                                                  cfg.data.val_fraction, cfg.train.seed)
    if cfg.data.max_images:
        train_files = train_files[:cfg.data.max_images]
    pair_spec = data.PairSpec(
        patch=cfg.data.patch_size, scales=scales, y_channel=spec.input == "y",
        pre_upsample=spec.pre_upsample, flip=cfg.data.flip, rot90=cfg.data.rot90,
        kind=cfg.degrade.kind, blur_sigma=tuple(cfg.degrade.blur_sigma),
        noise_prob=cfg.degrade.noise_prob, noise_sigma=tuple(cfg.degrade.noise_sigma),
        jpeg_prob=cfg.degrade.jpeg_prob, jpeg_quality=tuple(cfg.degrade.jpeg_quality),
        dropout_prob=cfg.degrade.dropout_prob, dropout_holes=tuple(cfg.degrade.dropout_holes),
        dropout_size=tuple(cfg.degrade.dropout_size))
    pairs = data.PairDataset(train_files, pair_spec, seed=cfg.train.seed, cache_mb=cfg.data.cache_mb,
                             progress=master and sys.stderr.isatty())
    if pairs.skipped:
        log(f"note: {pairs.skipped} training images are smaller than the patch and are not used")
    val_images = []
    if master:
        val_files = val_files[:cfg.val.max_images] if cfg.val.max_images else val_files
        val_images = [center_crop(read_rgb(f), cfg.val.crop) for f in val_files]
    start = state["step"] if state else 0
    steps = cfg.train.steps
    sampler = data.StepBatchSampler(start, steps, cfg.data.batch_size, scales, cfg.train.seed,
                                    rank, world)
    loader = torch.utils.data.DataLoader(
        pairs, batch_sampler=sampler, collate_fn=data.as_batch, num_workers=cfg.data.workers,
        pin_memory=dev.type == "cuda", worker_init_fn=_leave_signals_to_main,
        prefetch_factor=4 if cfg.data.workers else None)

    # ---------------------------------------------------------------- optimizer and friends
    model.to(dev)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = build_optimizer(cfg.optim, model.parameters())
    sched = build_scheduler(cfg.sched, opt, steps)
    scaler = torch.amp.GradScaler(dev.type, enabled=amp_dtype is torch.float16)
    ema = EMA(model, cfg.train.ema) if cfg.train.ema else None
    criterion = make_loss(cfg.loss.name, cfg.loss.eps)
    best_psnr, best_step, bad_vals = -math.inf, 0, 0
    if state:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if sched is not None and state.get("scheduler"):
            sched.load_state_dict(state["scheduler"])
            if cfg.sched.name == "cosine":  # a run extended with --set train.steps=N decays to N
                sched.T_max = steps
        scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("ema"):
            ema.model.load_state_dict(state["ema"])
        best_psnr, best_step, bad_vals = state["best_psnr"], state["best_step"], state["bad_vals"]
        if disc is not None:
            if not state.get("gan"):
                raise UserError(f"--resume: {run_dir} was not trained with a discriminator; start a "
                                "new run with --init from its weights instead")
            for key in ("model", "opt", "scaler"):
                disc[key].load_state_dict(state["gan"][key])
            if disc["sched"] is not None and state["gan"]["sched"]:
                disc["sched"].load_state_dict(state["gan"]["sched"])
        rngs = state["rng"]
        set_rng_states(rngs[rank] if len(rngs) == world else rngs[0], dev)
    net = nn.parallel.DistributedDataParallel(model, device_ids=[dev] if dev.type == "cuda" else None) \
        if ddp else model
    if cfg.train.compile:
        net = torch.compile(net)
    if disc is not None and ddp:
        disc["net"] = nn.parallel.DistributedDataParallel(
            disc["model"], device_ids=[dev] if dev.type == "cuda" else None)
    eval_model = ema.model if ema is not None else model

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

    def g_update(loss):
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        return optimizer_step(opt, scaler, model, cfg.optim)

    # ---------------------------------------------------------------- logging (rank 0 only)
    writer, metrics_file = None, None
    if master:
        run_dir.mkdir(parents=True, exist_ok=True)
        if reset:
            reset_run_dir(run_dir)
        cfg_path = run_dir / "config.toml"
        # a resumed run whose --set changed a value (e.g. train.steps) records it too, so that
        # config.toml always says what the run continues with
        if not resuming or config_mod.load_config(cfg_path, []) != cfg:
            tmp = cfg_path.with_name(f"config.toml.{os.getpid()}.tmp")
            tmp.write_text(config_text if config_text and not resuming else config_mod.to_toml(cfg))
            os.replace(tmp, cfg_path)
        kept = []
        if resuming and (run_dir / "metrics.jsonl").exists():  # drop lines after the checkpoint
            for line in (run_dir / "metrics.jsonl").read_text().splitlines():
                try:
                    if json.loads(line)["step"] <= start:
                        kept.append(line + "\n")
                except (ValueError, KeyError, TypeError):
                    pass
        tmp = run_dir / ".metrics.jsonl.part"
        tmp.write_text("".join(kept))
        os.replace(tmp, run_dir / "metrics.jsonl")
        metrics_file = open(run_dir / "metrics.jsonl", "a")
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(run_dir / "tb"), purge_step=start if resuming else None)

    def record(obj: dict) -> None:
        metrics_file.write(json.dumps(obj) + "\n")
        metrics_file.flush()

    def save(step: int, finished: str | None) -> None:
        """last.safetensors (weights to evaluate) then last_state.pt (what --resume reads)."""
        rngs = [None] * world
        if ddp:
            dist.all_gather_object(rngs, rng_states(dev))
        else:
            rngs = [rng_states(dev)]
        if not master:
            return
        extra = {"step": step, "best_val_psnr": best_psnr if best_step else None}
        checkpoint.save_checkpoint(eval_model, run_dir / "last.safetensors",
                                   config=config_mod.to_dict(cfg), extra=extra)
        atomic_torch_save({
            "step": step, "epoch": step * cfg.data.batch_size * world // len(pairs),
            "finished": finished, "model": model.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict() if sched is not None else None,
            "scaler": scaler.state_dict(), "ema": ema.model.state_dict() if ema else None,
            "gan": {k: (disc[k].state_dict() if disc[k] is not None else None)
                    for k in ("model", "opt", "sched", "scaler")} if disc else None,
            "rng": rngs, "best_psnr": best_psnr, "best_step": best_step, "bad_vals": bad_vals,
            "sampler": {"next_step": step, "seed": cfg.train.seed, "batch": cfg.data.batch_size,
                        "world": world, "scales": scales},
            "world": world}, run_dir / "last_state.pt")

    # ---------------------------------------------------------------- signals
    stop = {"signal": 0, "deadline": 0}
    deadline = started + max_minutes * 60 if max_minutes else math.inf

    def on_signal(signum, _frame):
        stop["signal"] = signum
        signal.signal(signum, signal.SIG_DFL)  # a second Ctrl-C / SIGTERM ends at once

    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    # ---------------------------------------------------------------- the loop
    log(f"training {cfg.model.name} x{'/'.join(map(str, scales))} on {len(pairs)} images "
        f"({len(val_images) if master else len(val_files)} for validation), {steps} steps of "
        f"{cfg.data.batch_size}x{world} patches of {cfg.data.patch_size}px, {dev.type}"
        f"{', ' + cfg.train.amp if amp_dtype else ''}{', resuming at step ' + str(start) if start else ''}")
    if master and not start:  # where the run trains: the shipped log summary quotes it
        record({"step": 0, "hardware": hardware_name(dev, cfg.train.threads), "world": world,
                "torch": torch.__version__})
    if master and val_images:
        base = validate(None, val_images, scales, dev)
        log(f"validation baseline: bicubic PSNR {base['psnr']:.2f} dB, SSIM {base['ssim']:.4f}")
        if not start:
            record({"step": 0, "val_bicubic_psnr": base["psnr"], "val_bicubic_ssim": base["ssim"]})
    bar = tqdm(total=steps, initial=start, desc="train", unit="step", disable=not master,
               file=sys.stderr, dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 30)
    net.train()
    sync_every = 1 if dev.type == "cpu" else cfg.train.log_every  # a GPU sync costs more
    finished, step, last_loss, last_terms = None, start, float("nan"), {}
    t0 = t_log = t_prev = time.time()
    t_val = t_save = 0.0  # the last validation's and save's durations: the deadline's margin
    aside = aside_log = 0.0  # seconds spent validating and saving, left out of patches/s
    try:
        for inp, target in (loader if cfg.data.workers else one_thread_batches(loader)):
            inp = inp.to(dev, non_blocking=True)
            target = target.to(dev, non_blocking=True)
            if cfg.train.channels_last:
                inp = inp.contiguous(memory_format=torch.channels_last)
            if disc is None:
                with amp():
                    pred = net(target, hr=True) if hr_input else net(inp)
                loss, parts = content(pred, target)
                if hr_input and model.aux_loss is not None:  # a joint model's rate term
                    loss = loss + model.aux_loss
                lr = g_update(loss)
            else:
                loss, parts, lr = gan_step(net, inp, target, lambda p: content(p, target),
                                           cfg.loss.adversarial_weight, g_update, disc, amp)
                lr_d = disc["opt"].param_groups[0]["lr"]
                if disc["sched"] is not None:
                    disc["sched"].step()
            if ema is not None:
                ema.update(model)
            if sched is not None and cfg.sched.name != "plateau":
                sched.step()
            step += 1
            bar.update(1)

            if step % cfg.train.log_every == 0 or step == steps:
                loss_t = torch.stack([loss.detach().float(), *(v.float() for v in parts.values())])
                if ddp:
                    dist.all_reduce(loss_t)
                    loss_t /= world
                last_loss, *terms = loss_t.tolist()
                last_terms = dict(zip(parts, terms))
                if disc is not None:
                    last_terms["lr_d"] = lr_d
                if master:
                    now = time.time()
                    n_steps = step - start if step - start < cfg.train.log_every else cfg.train.log_every
                    pps = n_steps * cfg.data.batch_size * world / max(now - t_log - (aside - aside_log), 1e-9)
                    t_log, aside_log = now, aside
                    record({"step": step, "epoch": step * cfg.data.batch_size * world // len(pairs),
                            "loss": last_loss, **last_terms, "lr": lr, "patches_per_s": round(pps, 1),
                            "time": round(now - t0, 3)})
                    writer.add_scalar("train/loss", last_loss, step)
                    for k, v in last_terms.items():
                        writer.add_scalar(f"train/{k}", v, step)
                    writer.add_scalar("train/lr", lr, step)
                    writer.add_scalar("train/patches_per_s", pps, step)
                    bar.set_postfix(loss=f"{last_loss:.4g}", lr=f"{lr:.2g}", refresh=False)

            if (cfg.val.every and step % cfg.val.every == 0) or step == steps:
                t_aside = time.time()
                v = validate(eval_model, val_images, scales, dev) if master and val_images else None
                box = [v["psnr"] if v else None]
                if ddp:
                    dist.broadcast_object_list(box, src=0)
                if box[0] is not None:
                    improved = box[0] > best_psnr
                    if improved:
                        best_psnr, best_step, bad_vals = box[0], step, 0
                    else:
                        bad_vals += 1
                    if master:
                        if improved:
                            checkpoint.save_checkpoint(
                                eval_model, run_dir / "best.safetensors", config=config_mod.to_dict(cfg),
                                extra={"step": step, "val_psnr": v["psnr"], "val_ssim": v["ssim"]})
                        record({"step": step, "val_psnr": v["psnr"], "val_ssim": v["ssim"],
                                "best": improved})
                        writer.add_scalar("val/psnr", v["psnr"], step)
                        writer.add_scalar("val/ssim", v["ssim"], step)
                        for i, img in enumerate(v["samples"][:cfg.val.samples]):
                            writer.add_image(f"val/sample{i}", img, step, dataformats="HWC")
                        tqdm.write(f"step {step}: val PSNR {v['psnr']:.2f} dB, SSIM {v['ssim']:.4f}"
                                   f"{' (best)' if improved else ''}", file=sys.stderr)
                    if sched is not None and cfg.sched.name == "plateau":
                        sched.step(box[0])
                    if cfg.val.patience and bad_vals >= cfg.val.patience:
                        finished = "early stop"
                    if on_validate is not None and on_validate(step, box[0]):
                        finished = "stopped by the caller"
                aside += time.time() - t_aside
                t_val = time.time() - t_aside

            if step == steps:
                finished = finished or "steps"
            # the chunk ends while a step, a validation and a save still fit before the deadline
            t_step = time.time()
            margin = 2 * (t_step - t_prev) + (cfg.val.every and t_val) + 2 * t_save
            t_prev = t_step
            if t_step + margin >= deadline:
                stop["deadline"] = 1
            if ddp and step % sync_every == 0:  # every rank stops at the same step
                flag = torch.tensor([stop["signal"], stop["deadline"]], dtype=torch.int32, device=dev)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                stop["signal"], stop["deadline"] = (int(v) for v in flag.tolist())
            halt = finished or ((stop["signal"] or stop["deadline"]) and (not ddp or step % sync_every == 0))
            if halt or step % cfg.train.ckpt_every == 0:
                t_aside = time.time()
                save(step, finished)
                t_save = time.time() - t_aside
                aside += t_save
                t_prev += t_save
            if halt:
                break
    finally:
        bar.close()
        for s, h in old_handlers.items():
            signal.signal(s, h)
        if writer is not None:
            writer.close()
        if metrics_file is not None:
            metrics_file.close()

    # ---------------------------------------------------------------- summary
    elapsed = time.time() - t0
    pps = (step - start) * cfg.data.batch_size * world / max(elapsed - aside, 1e-9)
    best = f"best val PSNR {best_psnr:.2f} dB at step {best_step} -> {run_dir / 'best.safetensors'}" \
        if best_step else f"no validation; weights -> {run_dir / 'last.safetensors'}"
    if stop["signal"] and not finished:
        name = signal.Signals(stop["signal"]).name
        log(f"stopped by {name} at step {step}/{steps}; saved {run_dir / 'last_state.pt'}; "
            f"continue with --resume")
        return 128 + stop["signal"]
    if stop["deadline"] and not finished:
        log(f"time limit ({max_minutes:g} min) at step {step}/{steps}; saved {run_dir / 'last_state.pt'}"
            f" ({pps:.0f} patches/s); continue with --resume")
        return 0
    if master:
        d_loss = f", D loss {last_terms['d_loss']:.4g}" if "d_loss" in last_terms else ""
        print(f"{finished}: step {step}/{steps} in {elapsed:.1f}s ({pps:.0f} patches/s), "
              f"loss {last_loss:.4g}{d_loss}; {best}")
    return 0


def run(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / Path(args.config).stem
    if args.resume and (run_dir / "config.toml").exists():
        # a run continues with its own resolved config; --set may still change it (e.g. steps)
        cfg = config_mod.load_config(run_dir / "config.toml", args.overrides)
        text = None
        if Path(args.config).is_file() and \
                config_mod.load_config(args.config, args.overrides) != cfg:
            print(f"note: resuming with {run_dir / 'config.toml'}, which differs from "
                  f"{args.config}; change values with --set", file=sys.stderr)
    else:
        cfg = config_mod.load_config(args.config, args.overrides)
        if not args.init and cfg.train.init and not Path(cfg.train.init).is_file():
            raise UserError(f"train.init: {cfg.train.init} not found (the weights this recipe starts "
                            "from): train that stage first, or pass --init CKPT")
        if args.init:  # the resolved config records where the run started
            cfg.train.init = args.init
        if cfg.train.init:
            note = adopt_init_widths(cfg, cfg.train.init)
            if note:
                print(f"note: {note}", file=sys.stderr)
        text = config_mod.to_toml(cfg)
    try:
        return train(cfg, run_dir, resume=args.resume, reset=args.reset, device=args.device,
                     init=args.init or cfg.train.init, config_text=text, max_minutes=args.max_minutes)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model from a TOML recipe (configs/*.toml)",
                       description="Train a registered model. Under torchrun it runs DDP; "
                                   "data.batch_size is per process.")
    p.add_argument("config", help="TOML recipe, e.g. configs/espcn-x3.toml")
    p.add_argument("--run-dir", metavar="DIR", help="default: runs/<config stem>")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    g.add_argument("--reset", action="store_true", help="discard the run in --run-dir and start over")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=1e-4 (repeatable)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--init", metavar="CKPT", help="start from these weights (tensors that fit; "
                   "default: train.init)")
    p.add_argument("--max-minutes", type=positive_minutes, metavar="N",
                   help="train a time-boxed chunk: save and stop before N minutes of wall time "
                        "(continue with --resume; default: no limit)")
    p.set_defaults(func=run)


def positive_minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a positive number of minutes, got {text!r}")
    return value
