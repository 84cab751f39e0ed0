"""The training batches on the training device, by either pipeline (`data.pipeline`):

- device: `data.device_batches.DeviceBatches` makes each whole batch where the model trains, from
  the uint8 store of the decoded images (`data.store`);
- workers: `data.pairs.PairDataset` in DataLoader workers (or in this process without workers),
  moved to the device; JPEG, noise and coarse dropout need it.

Both iterate the run's `StepBatchSampler` and make the same samples for a seed, so the step is
all a resumed run needs to continue the sequence (the draws are a function of (seed, sample)).
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from pathlib import Path

import torch

from ..data import device_batches as dev_data
from ..data import pairs as data
from ..data.store import open_store
from ..errors import UserError
from . import config as config_mod


def choose_pipeline(cfg: config_mod.Config, spec: data.PairSpec) -> str:
    """"device" or "workers": what `data.pipeline` asks, auto = device unless the recipe needs
    a degradation only PairDataset makes."""
    why = dev_data.unsupported(spec)
    if cfg.data.pipeline == "device" and why:
        raise UserError(f"data.pipeline = \"device\" does not make {why}; set data.pipeline = "
                        "\"workers\" (or \"auto\")")
    if cfg.data.pipeline == "workers" or why:
        return "workers"
    return "device"


def build_pairs(cfg: config_mod.Config, files: list[Path], spec: data.PairSpec, dev: torch.device,
                *, progress: bool, log):
    """The training pairs: a DeviceBatches over the image store, or a PairDataset."""
    if choose_pipeline(cfg, spec) == "workers":
        return data.PairDataset(files, spec, seed=cfg.train.seed, cache_mb=cfg.data.cache_mb,
                                progress=progress)
    store, built = open_store(files, cfg.data.store_dir or None, progress=progress)
    if built:
        log(f"decoded {len(files)} training images into {store.path} "
            f"({store.pixels.nbytes / 2 ** 20:.0f} MB)")
    pairs = dev_data.DeviceBatches(store, spec, seed=cfg.train.seed, device=dev)
    if not len(pairs):
        need = max(spec.core(s) for s in spec.scales)
        raise UserError(f"data.train: no image is at least {need}x{need} px (data.patch_size)")
    return pairs


def batches_on_device(pairs, sampler, cfg: config_mod.Config, dev: torch.device,
                      channels_last: bool):
    """(input, target) batches on `dev` for the sampler's steps."""
    if isinstance(pairs, dev_data.DeviceBatches):
        source = store_batches(pairs, sampler, one_thread=dev.type == "cpu")
    else:
        loader = build_loader(pairs, sampler, cfg, dev)
        source = loader if cfg.data.workers else one_thread_batches(loader)
    for inp, target in source:
        inp = inp.to(dev, non_blocking=True)
        target = target.to(dev, non_blocking=True)
        if channels_last:
            inp = inp.contiguous(memory_format=torch.channels_last)
        yield inp, target


def store_batches(pairs: dev_data.DeviceBatches, sampler, *, one_thread: bool):
    for keys in sampler:
        with torch_threads(1 if one_thread else None):
            batch = pairs.make_batch([k for k, _ in keys], keys[0][1])
        yield batch


@contextmanager
def torch_threads(n: int | None):
    """Run the block with `n` torch threads (None: as is). The pipeline's many small ops run
    several times faster on one thread than waiting on a pool sized for the model."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n:
            torch.set_num_threads(before)


def build_loader(pairs, sampler, cfg: config_mod.Config, dev) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        pairs, batch_sampler=sampler, collate_fn=data.as_batch, num_workers=cfg.data.workers,
        pin_memory=dev.type == "cuda", worker_init_fn=_leave_signals_to_main,
        prefetch_factor=4 if cfg.data.workers else None)


def _leave_signals_to_main(_worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C and SIGTERM to the main process, which saves and stops
    cleanly: a terminal's Ctrl-C, `kill -- -PGID` and batch schedulers (Slurm) signal the whole
    process group, and a worker that died of it made the main process fail without saving.
    Workers still end with the main process (PyTorch's watchdog) and when it shuts them down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def one_thread_batches(loader):
    """Batches made in this process with one torch thread (see `torch_threads`)."""
    it = iter(loader)
    while True:
        with torch_threads(1):
            try:
                batch = next(it)
            except StopIteration:
                return
        yield batch
