"""The processes a run spans and when they stop: the device and DDP ranks (rank 0 decides,
validates and writes; torchrun's, or an engine's: engines.py), Ctrl-C / SIGTERM, and the
--max-minutes deadline with the wall-clock bookkeeping that sizes it. Apart from the loop because
each piece must take the same collective steps on every rank, which reads best in one place."""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import UserError
from . import config as config_mod
from .engines import AccelerateEngine, DeepSpeedEngine, from_launcher


@dataclass(frozen=True)
class Procs:
    """This process's place in the run: rank `rank` of `world`, training on `dev`; `engine` is
    the launcher's engine that started the processes and wraps the networks (engines.py), None
    under torchrun or in a plain start (DDP of torch itself)."""
    rank: int
    world: int
    dev: torch.device
    engine: AccelerateEngine | DeepSpeedEngine | None = None

    @property
    def ddp(self) -> bool:
        return self.world > 1

    @property
    def master(self) -> bool:
        return self.rank == 0

    def log(self, msg: str) -> None:
        if self.master:
            print(msg, file=sys.stderr)

    def from_master(self, *values) -> list:
        """rank 0's `values`, on every rank (collective under DDP)."""
        box = list(values)
        if self.ddp:
            dist.broadcast_object_list(box, src=0)
        return box


def training_device(device: str | None) -> torch.device:
    """`--device` for training (cuda when available if not given); one line for a device this
    machine's torch cannot train on."""
    try:
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise UserError(f"--device must be cpu or cuda, got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is available to torch; use --device cpu")
    return dev


def start_processes(device: str | None) -> Procs:
    """This process's rank and device (torchrun's environment; cuda when available unless
    `device` says); joins the DDP process group when there are several ranks. Under `accelerate
    launch` its engine decides all three."""
    engine = from_launcher(device)
    if engine is not None:
        return Procs(rank=engine.rank, world=engine.world, dev=engine.device, engine=engine)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = training_device(device)
    if dev.type == "cuda":
        if world > 1 or dev.index is None:
            dev = torch.device("cuda", local_rank if world > 1 else 0)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Procs(rank=rank, world=world, dev=dev)


def set_torch_flags(cfg: config_mod.Config, dev: torch.device):
    """cuDNN / TF32, threads and determinism as the config asks; returns the autocast dtype
    (None: train.amp = none)."""
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = not cfg.train.deterministic
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True)
    amp_dtype = {"none": None, "auto": None, "bf16": torch.bfloat16,  # auto: training/speed.py
                 "fp16": torch.float16}[cfg.train.amp]
    if amp_dtype is torch.float16 and dev.type != "cuda":
        raise UserError("train.amp = fp16 needs CUDA; use bf16 on the CPU")
    return amp_dtype


class Stop:
    """What stops a run before it finishes: Ctrl-C / SIGTERM (the current step completes and is
    saved; a second signal ends the process at once) or the --max-minutes `deadline`."""

    def __init__(self, *, deadline: float):
        self.deadline = deadline
        self.signum = 0     # the signal received, 0 for none
        self.timed_out = 0  # 1 once a step, a validation and a save no longer fit
        self._old_handlers = {}

    def catch_signals(self) -> None:
        self._old_handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    def restore_signals(self) -> None:
        for s, h in self._old_handlers.items():
            signal.signal(s, h)
        self._old_handlers = {}

    def _on_signal(self, signum, _frame) -> None:
        self.signum = signum
        signal.signal(signum, signal.SIG_DFL)  # a second Ctrl-C / SIGTERM ends at once

    def requested(self, procs: Procs, step: int, sync_every: int) -> bool:
        """Whether a signal or the deadline stops the run after `step`. Under DDP the ranks
        share their flags every `sync_every` steps (collective), so that all stop at one step."""
        if procs.ddp:
            if step % sync_every:
                return False
            flag = torch.tensor([self.signum, self.timed_out], dtype=torch.int32, device=procs.dev)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            self.signum, self.timed_out = (int(v) for v in flag.tolist())
        return bool(self.signum or self.timed_out)


class Pace:
    """Wall-clock bookkeeping from the first step at `start`: patches/s leaves out the seconds
    spent validating and saving (`aside`), and the last step's, validation's and save's
    durations give the margin by which a time-boxed chunk stops before its deadline."""

    def __init__(self, *, start: int):
        self.start = start
        self.t0 = self.t_log = self.t_prev = time.time()
        self.t_val = self.t_save = 0.0  # the last validation's and save's durations
        self.aside = self.aside_log = 0.0

    def validated(self, *, since: float) -> None:
        self.aside += time.time() - since
        self.t_val = time.time() - since

    def saved(self, *, since: float) -> None:
        self.t_save = time.time() - since
        self.aside += self.t_save
        self.t_prev += self.t_save  # the next step's duration leaves the save out

    def since_log(self, step: int, log_every: int, patches_per_step: int) -> tuple[float, float]:
        """(patches/s since the last log line, seconds since the start)."""
        now = time.time()
        n_steps = min(step - self.start, log_every)
        pps = n_steps * patches_per_step / max(now - self.t_log - (self.aside - self.aside_log), 1e-9)
        self.t_log, self.aside_log = now, self.aside
        return pps, now - self.t0

    def past_deadline(self, deadline: float, *, val_every: int) -> bool:
        """True when another step, a validation and a save may not fit before `deadline`."""
        t_step = time.time()
        margin = 2 * (t_step - self.t_prev) + (val_every and self.t_val) + 2 * self.t_save
        self.t_prev = t_step
        return t_step + margin >= deadline

    def overall(self, step: int, patches_per_step: int) -> tuple[float, float]:
        """(seconds since the start, patches/s over the whole chunk)."""
        elapsed = time.time() - self.t0
        return elapsed, (step - self.start) * patches_per_step / max(elapsed - self.aside, 1e-9)
