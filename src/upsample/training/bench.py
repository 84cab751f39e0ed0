"""`upsample bench --train MODEL`: training throughput of our trainer against a plain reference
loop, same model, recipe patch and batch, in one run.

- ours: the trainer's own pieces (training/loop.py, batches.py, speed.py): batches made on the
  device from the image store, the step in the modes `auto` picks by timing (bf16 autocast,
  channels_last), fused/foreach optimizer, the loss read once at the end.
- reference: what BasicSR-style trainers do: a DataLoader (the recipe's workers) of per-sample
  random crops of HR and its offline MATLAB-bicubic LR, numpy flips/transposes, and an eager fp32
  step with the default optimizer implementation, the loss read every step.

Both run with the recipe's `train.threads` (unless `threads` is given) and are timed for
`seconds` (at least 3 steps) after 2 warm-up steps. GFLOP/s = forward MACs of
a patch x 2 (FLOPs per MAC) x 3 (forward + backward, which costs about twice the forward) x
patches/s; "of peak" is against the machine's matmul peak measured in the same run
(`evaluation.bench.measure_peaks`): bf16's where the hardware has bf16 units, else fp32's.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from ..data import sources
from ..data.degrade import imresize_np
from ..data.pairs import rgb_to_y01
from ..errors import UserError
from ..evaluation.bench import half_dtype, measure_peaks
from ..media.imageio import read_rgb
from ..models import registry
from ..runtime.hardware import cpu_name, sync
from . import config as config_mod
from . import loop
from .batches import batches_on_device, build_pairs, pipeline_of
from .losses import make_loss
from .procs import Procs, training_device
from .recipe import check_packaged_data, recipe_overrides
from .state import Sampling

# The source repository's configs/, where this module runs from a checkout (src/upsample/...);
# an installed package has none, and finds a shipped model's recipe packaged beside its weights.
_ROOT = Path(__file__).resolve().parents[3]
CONFIGS = _ROOT / "configs" if (_ROOT / "pyproject.toml").is_file() else None


def find_recipe(target: str) -> Path:
    """A recipe file; else the recipe named after the model: ./configs/NAME.toml, the source
    checkout's configs/NAME.toml, or (an installed package) a shipped model's packaged recipe."""
    places = [Path(target), Path("configs") / f"{target}.toml"] + \
        ([CONFIGS / f"{target}.toml"] if CONFIGS else [])
    for p in places:
        if p.is_file():
            return p
    packaged = registry.shipped_recipe(target)
    if packaged is not None:
        return packaged
    if target.endswith(".toml") or os.sep in target or "/" in target:
        raise UserError(f"bench --train: recipe file not found: {target}")
    shipped = ", ".join(n for n in registry.list_models() if registry.shipped_recipe(n))
    raise UserError(f"bench --train: no recipe for {target!r}; give a recipe file (a TOML recipe, as "
                    f"`upsample train` takes), or a shipped model's name ({shipped}: its packaged recipe)")


def load_recipe(target: str, overrides: list[str], user: list[str] = ()) -> tuple[Path, config_mod.Config]:
    """(recipe file, its config with `overrides` and the user's --set `user`) of `target`. A
    recipe of the checkout's configs/ given by model name has its data paths made relative to the
    folder that holds configs/, as `upsample train configs/NAME.toml` run there reads them,
    wherever bench is run from; a recipe file's, a packaged recipe's and --set's stay relative to
    the current folder, as `train` reads them."""
    recipe = find_recipe(target)
    cfg = config_mod.load_config(recipe, recipe_overrides([*overrides, *user],  # as `train NAME` takes it
                                                          packaged=recipe == registry.shipped_recipe(target)))
    if recipe != Path(target) and recipe.resolve().parent.name == "configs":
        root = recipe.resolve().parent.parent
        given = {o.split("=", 1)[0].strip() for o in user}
        if "data.train" not in given:
            cfg.data.train = [os.path.normpath(root / p) for p in cfg.data.train]  # an absolute p stays
        if cfg.data.val_list and "data.val_list" not in given:
            cfg.data.val_list = os.path.normpath(root / cfg.data.val_list)
    return recipe, cfg


def training_files(cfg: config_mod.Config, recipe: Path, target: str, max_images: int,
                   user: list[str] = ()) -> list[Path]:
    """The recipe's training images (at most `max_images`); a packaged recipe names the images
    that trained the shipped model, which a user's machine does not have: say how to give others."""
    if recipe == registry.shipped_recipe(target):
        check_packaged_data(target, cfg, list(user))
    files, _ = sources.training_images(cfg.data.train, val_list=cfg.data.val_list,
                                       val_fraction=cfg.data.val_fraction, seed=cfg.train.seed,
                                       video_every=cfg.data.video_every, max_images=max_images,
                                       split_seed=config_mod.split_seed(cfg))
    return files


def forward_macs(model: torch.nn.Module, shape: tuple) -> int:
    """Multiply-accumulates of the forward that training runs on an input of `shape` (a joint
    down+up model's: the round trip from HR, `trains_on_hr`)."""
    counter = FlopCounterMode(display=False)
    if getattr(model, "trains_on_hr", False):  # its downscaler's autocast has no meta device: one patch on the CPU
        with counter, torch.no_grad():
            copy.deepcopy(model).cpu().float()(torch.zeros(*shape), hr=True)
        return counter.get_total_flops() // 2
    meta = copy.deepcopy(model).to(device="meta", dtype=torch.float32)
    with counter, torch.no_grad():
        meta(torch.zeros(*shape, device="meta"))
    return counter.get_total_flops() // 2


def timed_steps(step, dev: torch.device, seconds: float, batch: int) -> float:
    """Patches/s of `step()` (which returns the loss tensor) after 2 warm-up steps."""
    for _ in range(2):
        loss = step()
    float(loss)
    sync(dev)
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < seconds:
        loss = step()
        n += 1
    float(loss)  # the one read of the loss (it waits for the device)
    sync(dev)
    return n * batch / (time.perf_counter() - t0)


def time_ours(cfg: config_mod.Config, files: list[Path], dev: torch.device, seconds: float, log) -> tuple:
    """(patches/s, the step's modes, "device" or "workers") of the trainer's own pipeline and step."""
    torch.manual_seed(cfg.train.seed)
    model = registry.create_model(cfg.model.name, colorspace=cfg.model.colorspace, **cfg.model.kwargs)
    scales = loop.training_scales(cfg, model.upsample_spec)
    procs = Procs(rank=0, world=1, dev=dev)
    pairs = build_pairs(cfg, files, loop.pair_spec(cfg, model.upsample_spec, scales), dev,
                        progress=False, log=log)
    sampling = Sampling(steps=10 ** 9, batch_size=cfg.data.batch_size, scales=scales,
                        seed=cfg.train.seed, rank=0, world=1, n_images=len(pairs))
    modes = loop.step_modes(cfg, model, pairs, sampling, procs, None)
    state = loop.build_state(cfg, model, None, procs, modes, sampling)
    train_step = loop.make_train_step(cfg, state, model, None, modes)
    model.train()
    batches = batches_on_device(pairs, sampling.batch_sampler(0), cfg, dev, modes.channels_last)
    speed = timed_steps(lambda: train_step(*next(batches))[0], dev, seconds, cfg.data.batch_size)
    return speed, modes, pipeline_of(pairs)


class ReferencePairs(torch.utils.data.Dataset):
    """BasicSR's paired dataset: each HR image and its LR made offline (MATLAB bicubic; VDSR's
    input upscaled back to HR size), and per sample a random aligned crop, random flips and
    transpose in numpy, then float tensors."""

    def __init__(self, files: list[Path], *, patch: int, scale: int, y: bool, pre_upsample: bool):
        self.patch, self.scale, self.pre = patch, scale, pre_upsample
        self.pairs = []
        for f in files:
            hr = read_rgb(f)
            hr = hr[:hr.shape[0] // scale * scale, :hr.shape[1] // scale * scale]
            if min(hr.shape[:2]) < patch:
                continue
            lr = imresize_np(hr, 1 / scale)
            if pre_upsample:
                lr = imresize_np(lr, float(scale), size=hr.shape[:2])
            self.pairs.append(tuple(self._channels(a, y) for a in (lr, hr)))

    @staticmethod
    def _channels(img: np.ndarray, y: bool) -> np.ndarray:
        t = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].double() / 255
        return (rgb_to_y01(t) if y else t)[0].float().numpy()

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        rng = np.random.default_rng()
        lr, hr = self.pairs[i % len(self.pairs)]
        s = 1 if self.pre else self.scale
        lp = self.patch // s
        y, x = rng.integers(0, lr.shape[1] - lp + 1), rng.integers(0, lr.shape[2] - lp + 1)
        lr = lr[:, y:y + lp, x:x + lp]
        hr = hr[:, y * s:y * s + self.patch, x * s:x * s + self.patch]
        if rng.random() < 0.5:
            lr, hr = lr[:, :, ::-1], hr[:, :, ::-1]
        if rng.random() < 0.5:
            lr, hr = lr[:, ::-1], hr[:, ::-1]
        if rng.random() < 0.5:
            lr, hr = lr.transpose(0, 2, 1), hr.transpose(0, 2, 1)
        return torch.from_numpy(lr.copy()), torch.from_numpy(hr.copy())


def time_reference(cfg: config_mod.Config, files: list[Path], dev: torch.device, seconds: float) -> float:
    torch.manual_seed(cfg.train.seed)
    model = registry.create_model(cfg.model.name, colorspace=cfg.model.colorspace, **cfg.model.kwargs).to(dev).train()
    spec = model.upsample_spec
    scale = spec.scale or loop.training_scales(cfg, spec)[0]
    patch = cfg.data.patch_size if spec.pre_upsample else cfg.data.patch_size // scale * scale
    ds = ReferencePairs(files, patch=patch, scale=scale, y=spec.input == "y", pre_upsample=spec.pre_upsample)
    loader = iter(torch.utils.data.DataLoader(
        ds, batch_size=cfg.data.batch_size, num_workers=cfg.data.workers,
        sampler=torch.utils.data.RandomSampler(ds, replacement=True, num_samples=10 ** 9),
        drop_last=True, pin_memory=dev.type == "cuda"))
    o = cfg.optim
    opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay) \
        if o.name == "sgd" else torch.optim.Adam(model.parameters(), lr=o.lr, betas=tuple(o.betas))
    criterion = make_loss(cfg.loss.name, cfg.loss.eps)
    hr_input = getattr(model, "trains_on_hr", False)  # joint down+up: the round trip from HR, as ours

    def step():
        lr, hr = (t.to(dev) for t in next(loader))
        loss = criterion(model(hr, hr=True) if hr_input else model(lr), hr)
        if hr_input and model.aux_loss is not None:  # its rate term, as the trainer adds it
            loss = loss + model.aux_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()  # as the reference logs it: every step
        return loss.detach()
    return timed_steps(step, dev, seconds, cfg.data.batch_size)


def bench_train(target: str, *, seconds: float = 4.0, device: str = "cpu", threads: int | None = None,
                max_images: int = 32, log=None, overrides: list[str] = ()) -> dict:
    """Our trainer and the reference loop on `target`'s recipe (a model name or recipe file, with
    the --set `overrides`):
    patches/s, GFLOP/s and share of the measured matmul peak of each, and ours / reference."""
    log = log or (lambda _m: None)
    if not 0 < seconds < float("inf"):
        raise UserError(f"--seconds must be a positive number of seconds, got {seconds:g}")
    dev = training_device(device)
    recipe, cfg = load_recipe(target, ["train.amp=auto", "train.channels_last=auto"], overrides)
    threads = threads or cfg.train.threads  # the recipe's threads, as the trainer sets them
    if threads:
        torch.set_num_threads(threads)
    files = training_files(cfg, recipe, target, max_images, overrides)
    model = registry.create_model(cfg.model.name, colorspace=cfg.model.colorspace, **cfg.model.kwargs)
    spec = model.upsample_spec
    hr_input = spec.pre_upsample or getattr(model, "trains_on_hr", False)  # the network takes the HR-sized patch
    side = cfg.data.patch_size if hr_input else cfg.data.patch_size // (spec.scale or 1)
    macs = forward_macs(model, (1, spec.channels, side, side))
    hdt = half_dtype(dev)
    log("measuring peak: 2048^3 matmul")
    peaks = measure_peaks(dev, hdt, threads)
    peak_key = "bfloat16" if "bfloat16" in peaks else "fp32"
    log(f"timing our trainer ({recipe}, {len(files)} images)")
    ours, modes, pipeline = time_ours(cfg, files, dev, seconds, log)
    log("timing the reference loop")
    ref = time_reference(cfg, files, dev, seconds)
    batches = f"DataLoader x{cfg.data.workers}" if pipeline == "workers" else "device batches"
    rows = [{"loop": f"ours ({modes.label()}, {batches})", "patches_per_s": ours},
            {"loop": f"reference (fp32 eager, DataLoader x{cfg.data.workers})", "patches_per_s": ref}]
    for row in rows:
        row["gflops"] = row["patches_per_s"] * macs * 2 * 3 / 1e9
        row["of_peak"] = row["gflops"] / peaks[peak_key]
    report = {"model": cfg.model.name, "recipe": str(recipe), "device": device if dev.type == "cuda"
              else f"{cpu_name()}, {torch.get_num_threads()} threads", "patch": cfg.data.patch_size,
              "input_side": side, "batch": cfg.data.batch_size, "gmacs_per_patch": macs / 1e9,
              "peak_gflops": peaks, "peak_key": peak_key, "rows": rows, "speedup": ours / ref}
    left_out = [what for what, on in (("discriminator", cfg.gan.discriminator),
                                      ("perceptual loss", cfg.loss.perceptual.weight)) if on]
    if left_out:  # both loops time the generator's step alone: the figures would not say so
        report["note"] = (f"the recipe's {' and '.join(left_out)} left out of both loops: the generator's "
                          f"{cfg.loss.name} step alone")
    return report


def format_train_report(r: dict) -> str:
    peaks = ", ".join(f"{k} {v:.0f}" for k, v in r["peak_gflops"].items())
    lines = [f"{r['model']} training ({r['recipe']}): input {r['input_side']} px, batch {r['batch']}, "
             f"{r['gmacs_per_patch']:.3f} GMAC/patch forward; {r['device']}; peak GFLOP/s (matmul): {peaks}",
             f"{'loop':<44} {'patches/s':>10} {'GFLOP/s':>8} {'of ' + r['peak_key'] + ' peak':>16}"]
    for row in r["rows"]:
        lines.append(f"{row['loop']:<44} {row['patches_per_s']:>10.1f} {row['gflops']:>8.0f} "
                     f"{100 * row['of_peak']:>15.1f}%")
    lines.append(f"ours / reference: {r['speedup']:.2f}x")
    lines += [f"note: {r['note']}"] if r.get("note") else []
    return "\n".join(lines)
