"""Training throughput (patches/s) of the training step: fp32 vs bf16 autocast, +channels_last.

    python benchmarks/train_throughput.py                       # vapsr-x2 and espcn-x3 on the CPU
    python benchmarks/train_throughput.py --models espcn-x3 --seconds 5 --threads 1 --repeat 3
    python benchmarks/train_throughput.py --data                # also the data pipeline alone

Each row times full optimizer steps (forward, L1 loss, backward, Adam) on random batches of the
recipe's patch and batch size, after 2 warm-up steps, for `--seconds` and at least 3 steps; the
ratio is against fp32 of the same model. On a shared CPU, compare rows of one run only.
`--data` times the batches of both pipelines in this process on ../shared T91 (crop, MATLAB
bicubic LR, augment): `data.PairDataset` (data.pipeline = "workers") and
`data.device_batches.DeviceBatches` (data.pipeline = "device", here on the CPU). The whole
trainer against a reference loop is `upsample bench --train MODEL`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from upsample.models import registry
from upsample.training.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def recipes() -> dict[str, tuple[int, int]]:
    """model -> (input patch side, batch) from configs/*.toml (VDSR's input is at HR size)."""
    out = {}
    for path in sorted(CONFIGS.glob("*.toml")):
        cfg = load_config(path)
        scale = registry.get_spec(cfg.model.name).scale or 1
        out.setdefault(cfg.model.name, (cfg.data.patch_size // scale, cfg.data.batch_size))
    return out


RECIPES = recipes()
MODES = {"fp32": (None, False), "fp32+cl": (None, True), "bf16": (torch.bfloat16, False),
         "bf16+cl": (torch.bfloat16, True)}


def bench_step(name: str, mode: str, seconds: float, device: str, batch: int | None) -> float:
    lr_side, default_batch = RECIPES.get(name, (32, 16))
    batch = batch or default_batch
    dtype, channels_last = MODES[mode]
    torch.manual_seed(0)
    model = registry.create_model(name).to(device)
    spec = model.upsample_spec
    scale = spec.scale or 1
    x = torch.rand(batch, spec.channels, lr_side, lr_side, device=device)
    y = torch.rand(batch, spec.channels, lr_side * scale, lr_side * scale, device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), 1e-4)

    def step():
        with torch.autocast(torch.device(device).type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(x)
        loss = torch.nn.functional.l1_loss(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):  # warm-up: allocator, oneDNN primitive caches
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 3:
        step()
        n += 1
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return n * batch / (time.perf_counter() - t0)


def bench_data(name: str, seconds: float, batch: int | None, pipeline: str) -> float:
    """Training pairs per second of one pipeline's batches in this process."""
    from upsample.data import pairs as data
    from upsample.data.device_batches import DeviceBatches
    from upsample.data.store import open_store
    lr_side, default_batch = RECIPES.get(name, (32, 16))
    batch = batch or default_batch
    spec = registry.get_spec(name)
    scales = [spec.scale] if spec.scale else [2, 3, 4]
    files = [p for p, _ in data.collect_images(["../shared/datasets/train/T91"], "T91")]
    patch = lr_side * (spec.scale or 1)
    pair_spec = data.PairSpec(patch=patch, scales=scales, y_channel=spec.input == "y",
                              pre_upsample=spec.pre_upsample)
    ds = data.PairDataset(files, pair_spec, seed=0) if pipeline == "workers" else \
        DeviceBatches(open_store(files)[0], pair_spec, seed=0, device="cpu")
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 3:
        ds.make_batch([n * batch + i for i in range(batch)], scales[n % len(scales)])
        n += 1
    return n * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["vapsr-x2", "espcn-x3"])
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--seconds", type=float, default=4.0, help="timed seconds per row")
    ap.add_argument("--repeat", type=int, default=1, help="median of this many runs per row")
    ap.add_argument("--batch", type=int, default=None, help="override the recipe batch")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data", action="store_true", help="also time both data pipelines (1 process)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads")
    print(f"{'model':<12} {'mode':<8} {'LR patch':>8} {'batch':>5} {'patches/s':>10} {'vs fp32':>8}")
    for name in args.models:
        runs = {mode: [] for mode in args.modes}
        for _ in range(args.repeat):  # modes interleaved, so that a busy spell hits them all
            for mode in args.modes:
                runs[mode].append(bench_step(name, mode, args.seconds, args.device, args.batch))
        base = statistics.median(runs["fp32"]) if "fp32" in runs else None
        for mode in args.modes:
            pps = statistics.median(runs[mode])
            ratio = f"{pps / base:.2f}x" if base else "-"
            side, batch = RECIPES.get(name, (32, 16))
            print(f"{name:<12} {mode:<8} {side:>8} {args.batch or batch:>5} "
                  f"{pps:>10.{0 if pps >= 100 else 1}f} {ratio:>8}", flush=True)
        if args.data:
            side, batch = RECIPES.get(name, (32, 16))
            for pipeline in ("workers", "device"):
                pps = bench_data(name, args.seconds, args.batch, pipeline)
                print(f"{name:<12} {pipeline:<8} {side:>8} {args.batch or batch:>5} {pps:>10.0f} "
                      f"{'pairs/s':>8}", flush=True)


if __name__ == "__main__":
    main()
