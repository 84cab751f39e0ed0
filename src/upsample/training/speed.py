"""How the step computes: autocast dtype, memory layout and torch.compile (`StepModes`), with
"auto" settings decided by timing, as `--backend auto` decides inference by measuring.

`choose_modes` times a few optimizer steps of a throwaway copy of the model (its own optimizer,
the run's batch shape) in every candidate mode, interleaved so that a busy spell of a shared
machine hits them all, and keeps the fastest (the least time of a step in each mode). The run's
own weights and optimizer are untouched, and the choice is stored in last_state.pt
(`TrainState.modes`): a resumed run computes as the run it continues, bit for bit.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..models import vapsr
from ..runtime.hardware import cpu_has_bf16, sync
from . import config as config_mod
from .losses import make_loss
from .optim import build_optimizer

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class StepModes:
    amp: str = "none"            # none, bf16 or fp16
    channels_last: bool = False
    compile: bool = False
    compiled_grads: bool = False  # VapSR's depth-wise weight gradients by a compiled kernel (CPU)

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return AMP_DTYPES[self.amp]

    def label(self) -> str:
        parts = [self.amp if self.amp != "none" else "fp32"]
        parts += ["channels_last"] * self.channels_last + ["compiled"] * self.compile
        parts += ["compiled depth-wise grads"] * self.compiled_grads
        return "+".join(parts)

    def to_dict(self) -> dict:
        return asdict(self)


def has_fast_bf16(dev: torch.device) -> bool:
    if dev.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu_has_bf16()


def candidates(cfg: config_mod.TrainConfig, dev: torch.device, model: nn.Module | None = None) -> list[StepModes]:
    """The modes "auto" settings leave open (explicit settings are kept as they are). compile
    = auto compiles the forward + loss on CUDA, where fusing the many small kernels pays; on the
    CPU the step is oneDNN convolutions either way and compiling it costs minutes, so there
    "auto" offers one thing more: channels_last with VapSR's depth-wise weight gradients from a
    compiled kernel (`models.vapsr.tap_weight_grads`), for a model that has them."""
    amps = [cfg.amp] if cfg.amp != "auto" else ["none", "bf16"] if has_fast_bf16(dev) else ["none"]
    layouts = [bool(cfg.channels_last)] if cfg.channels_last != "auto" else [False, True]
    depthwise = model is not None and vapsr.has_depthwise(model)
    # CUDA "auto" leaves VapSR eager: on an H100, compile + channels_last made it slower (README)
    compiled = cfg.compile if cfg.compile != "auto" else dev.type == "cuda" and not depthwise
    found = [StepModes(amp=a, channels_last=c, compile=bool(compiled)) for a in amps for c in layouts]
    if cfg.compile == "auto" and dev.type == "cpu" and depthwise:
        found += [StepModes(amp=m.amp, channels_last=True, compiled_grads=True) for m in found if m.channels_last]
    return found


def resumed_modes(cfg: config_mod.TrainConfig, saved: dict) -> StepModes:
    """A resumed run's modes: the run's own choice for the settings that are "auto", the
    config's for the explicit ones (a --set on resume is honoured)."""
    def pick(key, value):
        return saved[key] if value == "auto" else value
    channels_last = bool(pick("channels_last", cfg.channels_last))
    return StepModes(amp=pick("amp", cfg.amp), channels_last=channels_last, compile=bool(pick("compile", cfg.compile)),
                     compiled_grads=cfg.compile == "auto" and channels_last and bool(saved.get("compiled_grads", False)))


@functools.cache
def _compiled_tap_grads() -> CompiledOrEager:
    # one kernel per layer shape, dtype and batch: more than torch's default of 8 recompiles
    # (then it would run the slow uncompiled form) in a process that tries several batch sizes
    return CompiledOrEager(vapsr.tap_weight_grads, eager=vapsr.native_weight_grads, dynamic=False,
                           recompile_limit=64)


def kernels_for(modes: StepModes):
    """The context a step of `modes` runs in: VapSR's depth-wise weight gradients compiled (one
    compiled function for the process, specialised per layer shape) or oneDNN's."""
    if modes.compiled_grads:
        return vapsr.depthwise_weight_grads(_compiled_tap_grads())
    return contextlib.nullcontext()


def choose_modes(cfg: config_mod.Config, model: nn.Module, sample: tuple[torch.Tensor, torch.Tensor],
                 dev: torch.device, *, rounds: int = 3, seconds: float = 3.0, log=None) -> StepModes:
    """The fastest of `candidates` for `model` on batches shaped like `sample` (input, target):
    at least `rounds` rounds of one step per mode, and more (up to 30) until `seconds` passed;
    after the first round a mode 1.5x slower than the best so far is not timed again."""
    cands = candidates(cfg.train, dev, model)
    if len(cands) == 1:
        return cands[0]
    if log is not None:  # the first steps may compile for a while: say what is going on
        log(f"timing the step in {len(cands)} modes" + (
            " (compiling the depth-wise gradient kernel first, ~15 s)" if any(m.compiled_grads for m in cands) else ""))
    with interrupt_promptly():
        chosen, best, cands = time_modes(cfg, model, sample, dev, cands, rounds=rounds, seconds=seconds)
    if log is not None:
        n = sample[0].shape[0]
        log("step modes (patches/s): " + ", ".join(
            f"{m.label()} {n / best[m]:.1f}" for m in cands) + f"; training with {chosen.label()}")
    return chosen


def time_modes(cfg: config_mod.Config, model: nn.Module, sample, dev: torch.device, cands: list, *,
               rounds: int, seconds: float) -> tuple[StepModes, dict, list]:
    """(the fastest of `cands`, each one's least step time, the modes timed): choose_modes' rounds."""
    steps = {m: mode_step(cfg, model, sample, dev, m) for m in cands}
    for step in steps.values():
        step()  # warm-up: allocator, oneDNN primitive caches, the compiled kernel
    if any(m.compiled_grads for m in cands) and not _compiled_tap_grads().works:
        # it ran oneDNN's gradients: not a mode a resumed run could reproduce where compiling works
        cands = [m for m in cands if not m.compiled_grads]
        steps = {m: steps[m] for m in cands}
    best = {m: float("inf") for m in cands}
    start, done = time.perf_counter(), 0
    while done < rounds or (time.perf_counter() - start < seconds and done < 30):
        done += 1
        for m, step in steps.items():
            if done > 1 and best[m] > 1.5 * min(best.values()):
                continue  # far behind after a round: not worth more of the run's time
            sync(dev)
            t = time.perf_counter()
            step()
            sync(dev)
            best[m] = min(best[m], time.perf_counter() - t)
    return min(cands, key=best.get), best, cands


REPEAT_INTERRUPT_S = 0.5  # how often a Ctrl-C / SIGTERM is raised again until it ends the timing


@contextlib.contextmanager
def interrupt_promptly():
    """Ctrl-C / SIGTERM end the timing at once, as they would anywhere else before the training
    loop. torch's compiler runs Python in weakref callbacks, where Python prints the
    KeyboardInterrupt ("Exception ignored in ...") and goes on: a Ctrl-C during the first
    compile was lost and the run trained on. So the signal is raised again every
    REPEAT_INTERRUPT_S, by the previous handler (KeyboardInterrupt, the CLI's Terminated), until
    it propagates out of here."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread (a caller's worker thread: as before)
        return
    caught, done, repeater = [], threading.Event(), []
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def again(signum):
        while not done.wait(REPEAT_INTERRUPT_S):
            os.kill(os.getpid(), signum)  # its handler runs in the main thread, once it can

    def on_signal(signum, frame):
        previous = old[signum]
        if callable(previous):
            if not caught:
                caught.append(signum)
                repeater.append(threading.Thread(target=again, args=(signum,), daemon=True))
                repeater[0].start()
            previous(signum, frame)  # raises: KeyboardInterrupt, Terminated
            done.set()  # it did not (a handler that notes the signal): nothing to raise again
        elif previous == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        # SIG_IGN (started with the signal ignored, e.g. nohup's SIGINT): ignored, as before

    hook = sys.unraisablehook

    def unraisable(info):
        if not issubclass(info.exc_type, KeyboardInterrupt):  # the lost one: raised again anyway
            hook(info)
    for s in old:
        signal.signal(s, on_signal)
    sys.unraisablehook = unraisable
    try:
        yield
    finally:
        done.set()
        for thread in repeater:
            thread.join()
        sys.unraisablehook = hook
        for s, h in old.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


def mode_step(cfg: config_mod.Config, model: nn.Module, sample, dev: torch.device, modes: StepModes):
    """One optimizer step of a copy of `model` in `modes` (eager: compiling is decided apart)."""
    net = copy.deepcopy(model).to(dev).train()
    inp, target = (t.to(dev) for t in sample)
    if modes.channels_last:
        net = net.to(memory_format=torch.channels_last)
        inp = inp.contiguous(memory_format=torch.channels_last)
    opt = build_optimizer(cfg.optim, net.parameters())
    criterion = make_loss(cfg.loss.name, cfg.loss.eps)
    dtype = modes.amp_dtype

    def step():
        with kernels_for(modes):
            with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                pred = net(inp)
            loss = criterion(pred.float(), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return step


class CompiledOrEager:
    """`torch.compile(fn, **options)`, falling back to `eager` (default `fn`) for good when a
    call fails in compiling (no C++ compiler, an unsupported op, a shape it cannot take): the
    run goes on eager and says so once. `recompile_limit`: how many specialisations torch may
    make of it (its own limit otherwise)."""

    def __init__(self, fn, *, eager=None, recompile_limit: int | None = None, **options):
        self.eager, self.compiled = eager or fn, torch.compile(fn, **options)
        self.limit = recompile_limit

    @property
    def works(self) -> bool:
        return self.compiled is not None

    def __call__(self, *args):
        if self.compiled is None:
            return self.eager(*args)
        try:
            if self.limit is None:
                return self.compiled(*args)
            with torch._dynamo.config.patch(recompile_limit=self.limit):
                return self.compiled(*args)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: train eager instead
            print(f"note: torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]});"
                  " training eager", file=sys.stderr)
            self.compiled = None
            return self.eager(*args)
