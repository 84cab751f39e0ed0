"""The processes a run spans and when they stop: the device and DDP ranks (rank 0 decides,
validates and writes; torchrun's, or an engine's: engines.py), Ctrl-C / SIGTERM, and the
--max-minutes deadline with the wall-clock bookkeeping that sizes it. Apart from the loop because
each piece must take the same collective steps on every rank, which reads best in one place."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import RankZeroError, UserError
from ..runtime.hardware import cpu_has_bf16
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


def launched_rank() -> int:
    """This process's rank where a launcher started the run (torchrun sets RANK, WORLD_SIZE,
    MASTER_ADDR and MASTER_PORT), else 0: a RANK set by hand is no other rank to speak for it."""
    rank, world = ((os.environ.get(n) or "").strip() for n in ("RANK", "WORLD_SIZE"))
    if not (rank.isdigit() and world.isdigit() and int(rank) < int(world)):
        return 0
    return int(rank) if os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT") else 0


def said_by_rank_zero(exc: UserError) -> UserError:
    """`exc` as raised before the processes of a launcher meet: every rank meets it alike, so
    on the others than rank 0 it is a RankZeroError, said once by rank 0."""
    return RankZeroError(str(exc)) if launched_rank() > 0 else exc


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
    world, rank, local_rank = launcher_env()
    try:
        dev = training_device(device)
    except UserError as exc:
        raise said_by_rank_zero(exc) from None
    if dev.type == "cuda":
        if world > 1 or dev.index is None:
            dev = torch.device("cuda", local_rank if world > 1 else 0)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        join_process_group("nccl" if dev.type == "cuda" else "gloo", rank, world)
    return Procs(rank=rank, world=world, dev=dev)


def launcher_env() -> tuple[int, int, int]:
    """(WORLD_SIZE, RANK, LOCAL_RANK) as a launcher (torchrun, Slurm's srun with them exported)
    sets them; one line for values that cannot be a run's ranks (set by hand, half of them)."""
    values = {}
    for name, default in (("WORLD_SIZE", "1"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        text = (os.environ.get(name) or default).strip()  # set but empty: as unset
        try:
            values[name] = int(text)
        except ValueError:
            values[name] = -1
        if values[name] < 0:
            raise UserError(f"environment variable {name}={text!r} is not a process count or rank; "
                            "start several processes with torchrun --nproc-per-node N, or unset it")
    world, rank = values["WORLD_SIZE"], values["RANK"]
    if world == 0 or rank >= world:
        raise UserError(f"RANK={rank} with WORLD_SIZE={world}: ranks run from 0 to WORLD_SIZE - 1; "
                        "start the processes with torchrun --nproc-per-node N, which sets both")
    if world > 1 and not dist.is_initialized():  # (a caller that joined them itself is past this)
        missing = [n for n in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(n)]
        if missing:
            raise UserError(f"WORLD_SIZE={world} is set but {' and '.join(missing)} "
                            f"{'is' if len(missing) == 1 else 'are'} not: the processes cannot meet. "
                            f"Start them with torchrun --nproc-per-node {world} (it sets RANK, WORLD_SIZE, "
                            "MASTER_ADDR and MASTER_PORT), or set all four in each")
    return world, rank, values["LOCAL_RANK"]


def join_process_group(backend: str, rank: int, world: int) -> None:
    """Join the other ranks (torch's env:// rendezvous); one line when that cannot work: the
    port is taken, or the address does not answer."""
    try:
        dist.init_process_group(backend)
    except (dist.DistNetworkError, dist.DistStoreError) as exc:  # DistStoreError: a timeout
        where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
        why = str(exc).split("message: ")[-1].strip().splitlines()[0]
        hint = ("another program (another run?) listens on it: pick a free port (--master-port, "
                "or torchrun --standalone, which finds one)" if "EADDRINUSE" in str(exc) else
                "check that rank 0 runs there and that the port is open between the machines")
        raise UserError(f"rank {rank} of {world} cannot join the others at {where} ({why}); "
                        f"{hint}") from None


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
        raise UserError("train.amp = fp16 needs CUDA; on the CPU use " + (
            "bf16 or auto" if cpu_has_bf16() else "auto or none (this CPU has no bf16 units)"))
    return amp_dtype


def process_start_time() -> float:
    """When this process started (time.time()'s clock), so that --max-minutes counts the seconds
    of importing torch and reading the recipe too (a job's time limit does); now, where /proc
    does not say."""
    now = time.time()
    try:
        with open("/proc/self/stat") as f:  # field 22, after the name in parentheses: clock ticks
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:  # since boot, in seconds since the epoch (btime)
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        started = boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return now
    return started if now - 3600 < started <= now else now  # a clock set since: as now


# a signal this soon after the first is the same stop request, forwarded by a launcher
REPEAT_GRACE_S = 1.0
# a step that runs on this long after a signal: say that the run stops after it
STILL_STEPPING_S = 1.0


def _say_stopping(signum: int) -> None:
    """The line for a signal whose step runs on; a raw write (from a timer thread), not print:
    the main thread may be inside a write to stderr."""
    line = (f"{signal.Signals(signum).name}: stopping once the step in progress (a first step may "
            "compile) or its validation ends, then saving; the same signal again, a second or more "
            "later, ends the run at once, unsaved\n")
    try:
        os.write(2, line.encode())
    except OSError:
        pass


class Stop:
    """What stops a run before it finishes: Ctrl-C / SIGTERM (the current step completes and is
    saved; a second signal, REPEAT_GRACE_S or more after the first, ends the process at once) or
    the --max-minutes `deadline`."""

    def __init__(self, *, deadline: float):
        self._deadline = deadline
        self.signum = 0     # the signal received, 0 for none
        self.timed_out = 0  # 1 once a step, a validation and a save no longer fit
        self._old_handlers = {}
        self._caught_at = None  # when this process caught its first signal (time.monotonic)
        self._lookahead = 0.0   # seconds of the steps a flag waits for the ranks' next sync
        self._last_sync = None  # (time, step) of the last sync

    @property
    def deadline(self) -> float:
        """When the run must have stopped, brought forward under DDP by the steps a rank's
        time-out waits for the next sync (every `sync_every` steps), so that the ranks still
        stop before the --max-minutes deadline."""
        return self._deadline - self._lookahead

    def catch_signals(self, *, say: bool = False) -> None:
        """From now on a signal stops the run after its step; `say`: this rank says so when that
        step runs on (a first step that compiles for half a minute was a silent half minute)."""
        self._say = say
        self._old_handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    def restore_signals(self) -> None:
        if getattr(self, "_notice", None) is not None:
            self._notice.cancel()
        for s, h in self._old_handlers.items():
            signal.signal(s, h)
        self._old_handlers = {}

    def _on_signal(self, signum, _frame) -> None:
        now = time.monotonic()
        if self._caught_at is None:
            self._caught_at, self.signum = now, self.signum or signum
            if getattr(self, "_say", False):
                self._notice = threading.Timer(STILL_STEPPING_S, _say_stopping, args=(signum,))
                self._notice.daemon = True
                self._notice.start()
        elif now - self._caught_at >= REPEAT_GRACE_S:  # a second Ctrl-C / SIGTERM ends at once
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        # else the same request again: a launcher (torchrun, accelerate, deepspeed, srun) forwards
        # to its processes the Ctrl-C or SIGTERM that the terminal or scheduler already sent them

    def requested(self, procs: Procs, step: int, sync_every: int) -> bool:
        """Whether a signal or the deadline stops the run after `step`. Under DDP the ranks
        share their flags every `sync_every` steps (collective), so that all stop at one step."""
        if procs.ddp:
            if step % sync_every:
                return False
            self._learn_lookahead(step, sync_every)
            flag = torch.tensor([self.signum, self.timed_out], dtype=torch.int32, device=procs.dev)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            self.signum, self.timed_out = (int(v) for v in flag.tolist())
        return bool(self.signum or self.timed_out)

    def _learn_lookahead(self, step: int, sync_every: int) -> None:
        """The time of the steps between two syncs but one (validations and saves included), from
        the last such stretch: a rank that times out right after a sync stops only at the next."""
        now = time.time()
        if sync_every > 1 and self._last_sync is not None and step > self._last_sync[1]:
            per_step = (now - self._last_sync[0]) / (step - self._last_sync[1])
            self._lookahead = (sync_every - 1) * per_step
        self._last_sync = (now, step)


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
