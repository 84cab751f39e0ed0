"""The training batches on the training device, by either pipeline (`data.pipeline`):

- device: `data.device_batches.DeviceBatches` makes each whole batch where the model trains, from
  the uint8 store of the decoded images (`data.store`);
- workers: `data.pairs.PairDataset` in DataLoader workers (or in this process without workers),
  moved to the device.

Both iterate the run's `StepBatchSampler` and make the same samples for a seed (but the noise and
the dropout rectangles: the same law, other values), so the step is all a resumed run needs to
continue the sequence (the draws are a function of (seed, sample)); it keeps its pipeline.
"""

from __future__ import annotations

import fcntl
import os
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ..data import device_batches as dev_data
from ..data import pairs as data
from ..data import prepare
from ..data import store
from ..data.store import open_store
from ..errors import UserError
from ..media.progress import counted
from . import config as config_mod


def choose_pipeline(cfg: config_mod.Config, spec: data.PairSpec, saved: dict | None = None) -> str:
    """"device" or "workers": what `data.pipeline` asks; "auto" takes the device, or for a run
    resumed from the state `saved` the pipeline it trained on (its samples go on exactly). A state
    saved before it named its pipeline ran the workers where the recipe asked for JPEG, noise or
    coarse dropout (the device pipeline did not make them then)."""
    if cfg.data.pipeline != "auto":
        return cfg.data.pipeline
    if saved is None:
        return "device"
    if "pipeline" in saved:
        return saved["pipeline"]
    return "workers" if max(spec.jpeg_prob, spec.noise_prob, spec.dropout_prob) > 0 else "device"


def pipeline_of(pairs) -> str:
    return "device" if isinstance(pairs, dev_data.DeviceBatches) else "workers"


def build_pairs(cfg: config_mod.Config, files: list[Path], spec: data.PairSpec, dev: torch.device,
                *, progress: bool, log, saved: dict | None = None):
    """The training pairs: a DeviceBatches over the image store, or a PairDataset (`choose_pipeline`
    of `saved`, a resumed run's state)."""
    if choose_pipeline(cfg, spec, saved) == "workers":
        pairs = data.PairDataset(files, spec, seed=cfg.train.seed, cache_mb=cfg.data.cache_mb,
                                 progress=progress)
        if progress:
            note_transparent(files, log)
        return pairs
    if not progress:  # another rank of the run: rank 0 decodes first, its progress shown
        wait_for_master_to_build(files, cfg.data.store_dir or None)
    store, built = open_store(files, cfg.data.store_dir or None, progress=progress)
    if built:
        log(f"decoded {counted(len(files), 'training image')} into {store.path} "
            f"({store.pixels.nbytes / 2 ** 20:.0f} MB)")
        note_transparent(files, log)  # once, with the decoding that it adds little to
    pairs = dev_data.DeviceBatches(store, spec, seed=cfg.train.seed, device=dev)
    if not len(pairs):
        raise data.no_image_fits(spec, np.minimum(store.heights, store.widths).tolist())
    return pairs


def note_transparent(files: list[Path], log) -> None:
    """A note naming a training image with transparent pixels: their colour there is trained on
    as stored, which `upsample image` never feeds a model, so the run learns edges that no
    picture shows (`prepare.transparent_images`). Silent before."""
    note = prepare.transparent_note(files, "data.train", "training learns")
    if note:
        log(note)


MASTER_HEAD_START_S = 5.0  # how long another rank of the run leaves a new store to rank 0


def wait_for_master_to_build(files: list[Path], root: str | None) -> None:
    """Under a launcher, a rank other than a machine's first (LOCAL_RANK 0) that finds no store
    of `files` waits, up to a few seconds, until that one holds the store's lock (or the store is
    there). Else the first to arrive built it silently, and rank 0, the rank that speaks, said
    "another run is decoding training images; waiting for it" of its own run, with no progress."""
    local_rank = (os.environ.get("LOCAL_RANK") or "0").strip()
    if not local_rank.isdigit() or int(local_rank) == 0:
        return
    base = Path(root) if root else store.default_root()
    name = store.store_name(files)
    index, lock = base / f"{name}.json", base / f".{name}.lock"
    deadline = time.monotonic() + MASTER_HEAD_START_S
    while time.monotonic() < deadline and not index.exists() and not locked(lock):
        time.sleep(0.05)


def locked(path: Path) -> bool:
    """Whether another process holds the flock of `path` (see media.cache.entry_lock)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


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
