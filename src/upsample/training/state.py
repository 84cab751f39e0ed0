"""What `--resume` needs, owned by one object: `TrainState.state_dict()` is what last_state.pt
holds and `load_state_dict()` puts it back, so saving and resuming are one code path. EMA and the
RNG helpers live here because the state is what carries them from one chunk of a run to the next.

last_state.pt keys (kept as runs in progress wrote them): step, epoch, finished, model, optimizer,
scheduler, scaler, ema, gan {model, opt, sched, scaler}, rng (one entry per rank), best_psnr,
best_step, bad_vals, sampler {next_step, seed, batch, world, scales, shift: what the sample
indices are offset by once a run resumed on another number of processes}, world, modes (how the step
computes: amp, channels_last, compile; a resumed run keeps them, see speed.py), deepspeed (under
the deepspeed launcher: the tag of its checkpoint in <run dir>/deepspeed, which holds the optimizer
shards instead of `optimizer`, its ZeRO stage, precision and world size; engines.py).

The training pairs hold no RNG state: every draw is a function of (seed, sample index) and the
sample indices of the sampler's step (both pipelines, see data/pairs.py and data/device_batches.py),
so `step` is all they need to continue exactly.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import pickle
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..data import pairs as data
from ..errors import UserError
from ..media.imageio import atomic_output
from ..runtime.hardware import machine_kind
from .engines import DeepSpeedEngine
from .gan import Discriminator
from .speed import StepModes

STATE_FILE = "last_state.pt"


class EMA:
    """Exponential moving average of a model's weights: ema = decay * ema + (1 - decay) * w."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, weights: dict) -> None:
        """One step towards `weights` (the trained network's state dict, fp32)."""
        for e, w in zip(self.model.state_dict().values(), weights.values()):
            if e.dtype.is_floating_point:
                e.lerp_(w, 1.0 - self.decay)
            else:
                e.copy_(w)


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


@dataclass(frozen=True)
class Sampling:
    """How this rank's batches are drawn (the batch sampler's arguments): samples are a pure
    function of (seed, step, rank), so the step is all a resumed run needs to continue them."""
    steps: int          # the run's length (a resume may extend it with --set train.steps=N)
    batch_size: int     # per rank
    scales: list
    seed: int
    rank: int
    world: int
    n_images: int       # training images: what an epoch is counted in
    shift: int = 0      # added to every sample index: nonzero once a run resumed on another world

    def drawn(self, step: int) -> int:
        """Samples the run drew (all ranks) in its steps before `step`."""
        return step * self.batch_size * self.world + self.shift

    def epoch(self, step: int) -> int:
        return self.drawn(step) // self.n_images

    def batch_sampler(self, start: int) -> data.StepBatchSampler:
        args = (start, self.steps, self.batch_size, self.scales, self.seed, self.rank, self.world)
        return ShiftedBatchSampler(*args, shift=self.shift) if self.shift else data.StepBatchSampler(*args)

    def resumed(self, saved: dict, step: int) -> tuple[Sampling, str | None]:
        """This run's sampling going on from a run that saved `saved` (last_state.pt's sampler) at
        `step`, and a note when that run had another number of processes: the samples go on
        after the ones it drew (its sample indices were laid out for its world) rather than
        repeat them, and the effective batch changes."""
        old_world, old_batch = saved.get("world", self.world), saved.get("batch", self.batch_size)
        old = dataclasses.replace(self, world=old_world, batch_size=old_batch, shift=saved.get("shift", 0))
        if (old_world, old_batch) == (self.world, self.batch_size):
            return dataclasses.replace(self, shift=old.shift), None
        now = dataclasses.replace(self, shift=old.drawn(step) - step * self.batch_size * self.world)
        note = (f"note: resuming a run trained on {old_world} process{'es' * (old_world != 1)} with "
                f"{self.world}: the batch is now {self.batch_size}x{self.world} patches (it was "
                f"{old_batch}x{old_world}; optim.lr is not rescaled), and the run goes on with other "
                "samples than an uninterrupted run would draw")
        return now, note


class ShiftedBatchSampler(data.StepBatchSampler):
    """StepBatchSampler whose sample indices start `shift` later (a run resumed on another world:
    Sampling.resumed)."""

    def __init__(self, *args, shift: int):
        super().__init__(*args)
        self.shift = shift

    def __iter__(self):
        for batch in super().__iter__():
            yield [(k + self.shift, s) for k, s in batch]


@dataclass
class TrainState:
    """Everything a run continues from: weights, optimizers, schedulers, GradScalers, EMA, the
    discriminator (`gan`), RNG states of every rank, step, best PSNR and
    patience counter, and the sampler position (`step`, with `sampling`)."""
    model: nn.Module
    opt: torch.optim.Optimizer
    sched: object | None
    scaler: torch.amp.GradScaler
    ema: EMA | None
    gan: Discriminator | None
    sampling: Sampling
    device: torch.device
    step: int = 0
    best_psnr: float = -math.inf
    best_step: int = 0
    bad_vals: int = 0           # validations in a row without a new best (val.patience)
    finished: str | None = None  # why the run ended: "steps", "early stop", ...
    modes: StepModes = StepModes()  # how the step computes (chosen once, kept by --resume)
    deepspeed: DeepSpeedEngine | None = None  # the optimizer and weights are in its hands
    images: dict | None = None  # the training and validation images' counts and digest (`images_of`)
    pipeline: str = "device"    # where its batches are made ("device" or "workers"), kept by --resume

    def weights(self) -> dict:
        """The trained network's fp32 state dict (collective under DeepSpeed's 16-bit modes)."""
        return self.deepspeed.fp32_weights(self.model) if self.deepspeed else self.model.state_dict()

    def state_dict(self) -> dict:
        """The contents of last_state.pt. Collective under DDP (it gathers every rank's RNG
        states): every rank calls it, rank 0 writes it."""
        s = self.sampling
        return {
            "step": self.step, "epoch": s.epoch(self.step), "finished": self.finished,
            "model": self.weights(),
            "optimizer": None if self.deepspeed else self.opt.state_dict(),
            "scheduler": self.sched.state_dict() if self.sched is not None else None,
            "scaler": self.scaler.state_dict(), "ema": self.ema.model.state_dict() if self.ema else None,
            "gan": {k: (getattr(self.gan, k).state_dict() if getattr(self.gan, k) is not None else None)
                    for k in ("model", "opt", "sched", "scaler")} if self.gan else None,
            "rng": all_rng_states(self.device, s.world), "best_psnr": self.best_psnr,
            "best_step": self.best_step, "bad_vals": self.bad_vals,
            "sampler": {"next_step": self.step, "seed": s.seed, "batch": s.batch_size,
                        "world": s.world, "scales": s.scales, "shift": s.shift},
            "world": s.world, "modes": self.modes.to_dict(), "machine": machine_kind(self.device),
            "images": self.images, "pipeline": self.pipeline,
            "deepspeed": self.deepspeed.saved if self.deepspeed else None}

    def _load_schedule(self, sched, saved: dict) -> None:
        """A scheduler's saved state; a cosine then decays to this run's steps (extended with --set
        train.steps=N: the generator's and the discriminator's alike, or the latter's lr climbed
        back past its old end)."""
        sched.load_state_dict(saved)
        if isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR):
            sched.T_max = self.sampling.steps

    def load_state_dict(self, sd: dict, *, run_dir: Path) -> None:
        """Continue from `sd` (a state_dict, possibly of a run with another world size: a rank
        the saved run did not have takes rank 0's RNG states). `finished` is not restored: a
        resumed run goes on until it finishes again."""
        if sd.get("deepspeed") and not self.deepspeed:
            raise UserError(f"--resume: {run_dir} was trained under deepspeed; resume it with the "
                            "deepspeed launcher, or start a new run with --init")
        self.model.load_state_dict(sd["model"])
        if not self.deepspeed:  # else its checkpoint (DeepSpeedEngine.load, once it wraps the model)
            self.opt.load_state_dict(sd["optimizer"])
        if self.sched is not None and sd.get("scheduler"):
            self._load_schedule(self.sched, sd["scheduler"])
        self.scaler.load_state_dict(sd["scaler"])
        if self.ema is not None and sd.get("ema"):
            self.ema.model.load_state_dict(sd["ema"])
        self.best_psnr, self.best_step, self.bad_vals = sd["best_psnr"], sd["best_step"], sd["bad_vals"]
        if self.gan is not None:
            if not sd.get("gan"):
                raise UserError(f"--resume: {run_dir} was not trained with a discriminator; start a "
                                "new run with --init from its weights instead")
            for key in ("model", "opt", "scaler"):
                getattr(self.gan, key).load_state_dict(sd["gan"][key])
            if self.gan.sched is not None and sd["gan"]["sched"]:
                self._load_schedule(self.gan.sched, sd["gan"]["sched"])
        rngs, s = sd["rng"], self.sampling
        set_rng_states(rngs[s.rank] if len(rngs) == s.world else rngs[0], self.device)
        self.step = sd["step"]
        self.sampling, note = s.resumed({"world": sd.get("world", s.world), **(sd.get("sampler") or {})},
                                        self.step)
        if note and s.rank == 0:
            print(note, file=sys.stderr)


def all_rng_states(device: torch.device, world: int) -> list[dict]:
    """The RNG states of every rank, in rank order (collective under DDP)."""
    if world > 1:
        rngs = [None] * world
        dist.all_gather_object(rngs, rng_states(device))
        return rngs
    return [rng_states(device)]


def read_state_file(run_dir: Path) -> dict:
    """last_state.pt of `run_dir`; a UserError when it is damaged (a copy cut short: the file is
    written atomically here) or not a training state, instead of torch's traceback."""
    path = run_dir / STATE_FILE
    try:
        sd = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        why = str(exc).split(". ")[0].strip() or type(exc).__name__  # torch's first sentence
        raise UserError(f"--resume: cannot read {path}, it is damaged ({why}); copy it again from where "
                        "the run was trained, or start over with --reset") from None
    except OSError as exc:
        raise UserError(f"--resume: cannot read {path}: {exc.strerror or exc}") from None
    if not isinstance(sd, dict) or "step" not in sd or "model" not in sd:
        raise UserError(f"--resume: {path} is not the training state `upsample train` writes; "
                        "start over with --reset, or --run-dir for a new run")
    return sd


def write_state_file(sd: dict, run_dir: Path) -> None:
    """Atomically: a kill while saving leaves the previous last_state.pt."""
    with atomic_output(run_dir / STATE_FILE) as tmp, open(tmp, "wb") as f:
        torch.save(sd, f)
        f.flush()
        os.fsync(f.fileno())
