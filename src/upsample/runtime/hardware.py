"""What this machine is and how fast it runs: CPU facts, the measured matmul peak, timing.

Benchmarks, `--backend auto` and the trainer read the processor from here (bench figures belong to
it; bf16 is chosen by measurement, and only where the CPU has bf16 units at all).
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np
import torch

from .cpu import cpu_has_bf16, cpu_kind, cpu_name  # noqa: F401  (their home for torch users)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_runs(fn, device: torch.device, warmup: int, runs: int) -> tuple[float, object]:
    """Median seconds of `runs` calls after `warmup` calls, and the last result."""
    out = None
    for _ in range(warmup):
        out = fn()
    sync(device)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def machine_kind(dev: torch.device) -> str:
    """What a timing of `dev` holds for: the GPU's name, or the CPU's with its speed flags."""
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return cpu_kind()


def peak_gflops(device: torch.device, dtype: torch.dtype, n: int = 2048, runs: int = 3,
                seconds: float = 0.5) -> float:
    """GFLOP/s of the fastest n x n x n matmul in `dtype` among at least `runs` and for at least
    `seconds` (the machine's practical peak; fast units need many runs for a steady figure)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.rand(n, n, generator=g).to(device, dtype)
    b = torch.rand(n, n, generator=g).to(device, dtype)
    torch.mm(a, b)
    sync(device)
    best, start, done = float("inf"), time.perf_counter(), 0
    while done < runs or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - t)
        done += 1
    return 2 * n ** 3 / best / 1e9


def openvino_peak_gflops(precision: str, threads: int | None, n: int = 2048, runs: int = 3,
                         seconds: float = 0.5) -> float:
    """The same matmul peak measured in OpenVINO (f32 or bf16): its kernels beat torch's on some
    CPUs, and a peak that a row can exceed is no peak."""
    import openvino as ov
    from openvino import opset13 as ops
    g = np.random.default_rng(0)
    a = ops.parameter([n, n], np.float32)
    b = ops.constant(g.random((n, n), dtype=np.float32))
    config = {"INFERENCE_PRECISION_HINT": precision}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    compiled = ov.Core().compile_model(ov.Model([ops.matmul(a, b, False, False)], [a]), "CPU", config)
    request, feed = compiled.create_infer_request(), {0: g.random((n, n), dtype=np.float32)}
    request.infer(feed)
    best, start, done = float("inf"), time.perf_counter(), 0
    while done < runs or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        request.infer(feed)
        best = min(best, time.perf_counter() - t)
        done += 1
    return 2 * n ** 3 / best / 1e9


def hardware_name(dev: torch.device, threads: int) -> str:
    """"NVIDIA H100 80GB HBM3" or "<cpu model> (N cores), T torch thread(s)"."""
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"{cpu_name()} ({os.cpu_count()} cores), {threads or torch.get_num_threads()} torch thread(s)"
