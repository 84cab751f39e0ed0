"""The quality gate of `--backend auto`: is a faster graph's picture as good as fp32's?

A candidate graph (all bf16, bf16 with fp32 ends, int8, fp16 on CUDA) is used when, on the probe
set shipped in `assets/probe/` (four 144x144 crops of training images - McMaster18 and T91,
lossless, in no benchmark - as HR, their LR made with the project's MATLAB bicubic), its Y-PSNR
against the HR stays within `DB_LIMIT` of the fp32 graph's on every picture, and its output is at
least `MIN_PSNR_VS_FP32` from the fp32 output on every picture (a guard against an overflow or a
broken graph that a PSNR against HR could hide). A per-pixel bound (the earlier 1/255 rule)
refused bf16 for every trained dense model although no benchmark or viewer sees the change.

The measurements are made once per weights and remembered in the cache; `GATE` is in every
check's name, so a change of the rule or of the probe set measures again.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.colour import YCC, rgb_to_ycbcr, to_uint8
from ..data.degrade import imresize, make_lr, scale_period
from ..media.cache import entry_lock
from ..media.imageio import atomic_write_bytes
from .cache import cache_dir
from .cpu import cpu_kind

GATE = "psnr1"  # the rule and probe set the remembered checks were made with: bump when either changes
DB_LIMIT = 0.02  # largest change of Y-PSNR against HR (dB) a faster graph may make, on any probe picture
MIN_PSNR_VS_FP32 = 50.0  # and the least PSNR (dB) of its output against the fp32 output
IDENTICAL_DB = 200.0  # what "identical to fp32" is stored as (JSON has no infinity)
ASSETS = Path(__file__).resolve().parents[1] / "assets"
PROBE = ASSETS / "probe.png"
PROBE_DIR = ASSETS / "probe"


def probe_image(channels: int = 3, side: int = 96) -> torch.Tensor:
    """A crop of the packaged sample photo-like image as float NCHW RGB in [0, 1] (Y for 1)."""
    from PIL import Image
    with Image.open(PROBE) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    h, w = arr.shape[:2]
    y, x = max(0, (h - side) // 2), max(0, (w - side) // 2)
    t = torch.from_numpy(np.ascontiguousarray(arr[y:y + side, x:x + side])).permute(2, 0, 1)[None]
    return t if channels == 3 else rgb_to_ycbcr(t)[:, :1]


@dataclass(frozen=True)
class Probe:
    name: str
    x: torch.Tensor  # the graph's input: LR RGB, or its Y (bicubic-upscaled for pre-upsampling nets)
    hr: np.ndarray   # the HR picture, uint8 HWC RGB
    border: int      # pixels left out at each side of the PSNR, as the papers' protocol does


def probe_set(scale: float, *, channels: int = 3, pre_upsample: bool = False, pad_multiple: int = 1,
              folder: Path = PROBE_DIR) -> list[Probe]:
    """The shipped probe pictures as inputs of a graph that takes `channels` (3: RGB -> RGB,
    1: Y -> Y) at `scale`; `pre_upsample`: the graph takes the bicubic-upscaled Y (VDSR's net)."""
    from PIL import Image
    probes = []
    for path in sorted(folder.glob("*.png")):
        with Image.open(path) as im:
            hr = np.asarray(im.convert("RGB"))
        m = scale_period(scale)[0] * pad_multiple  # LR sides whole and a multiple of what the net needs
        hr = np.ascontiguousarray(hr[:hr.shape[0] - hr.shape[0] % m, :hr.shape[1] - hr.shape[1] % m])
        x = make_lr(hr, scale)
        if channels == 1:
            x = rgb_to_ycbcr(x)[:, :1]
            if pre_upsample:
                x = imresize(x, size=hr.shape[:2])
        probes.append(Probe(path.stem, x.contiguous(), hr, max(1, math.ceil(scale))))
    return probes


def _y255(out: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """A graph's output as the saved picture's Y on the 0-255 scale (float64), and that picture."""
    if out.shape[1] == 3:
        img = to_uint8(out.float())
        return 16.0 + img.astype(np.float64) @ YCC[0], img
    plane = (out[0, 0].float().clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()
    return plane.astype(np.float64), plane


def _hr_y(p: Probe) -> np.ndarray:
    """The probe's HR as Y on the 0-255 scale (BT.601, 16-235, as `evaluation.metrics.rgb_to_y`)."""
    return 16.0 + p.hr.astype(np.float64) @ YCC[0]


def _psnr(a: np.ndarray, b: np.ndarray, border: int = 0) -> float:
    if border:
        a, b = a[border:-border, border:-border], b[border:-border, border:-border]
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return IDENTICAL_DB if mse == 0 else min(IDENTICAL_DB, 10.0 * math.log10(255.0 ** 2 / mse))


def reference(run, probes: list[Probe]) -> list[tuple[float, np.ndarray]]:
    """The fp32 graph on every probe: (its Y-PSNR against HR, its picture)."""
    found = []
    for p in probes:
        y, img = _y255(torch.as_tensor(np.asarray(run(p.x))))
        found.append((_psnr(y, _hr_y(p), p.border), img))
    return found


def quality(run, probes: list[Probe], ref: list[tuple[float, np.ndarray]]) -> dict:
    """How a candidate graph (`run`: graph input -> output) compares with fp32 on the probes:
    "db_change", its Y-PSNR against HR minus fp32's where that change is largest in size;
    "vs_fp32_db", the least PSNR of its picture against fp32's; "fp32_db", fp32's mean Y-PSNR."""
    change, vs_fp32 = 0.0, IDENTICAL_DB
    for p, (ref_db, ref_img) in zip(probes, ref):
        out = torch.as_tensor(np.asarray(run(p.x)))
        if not torch.isfinite(out).all():  # NaN / inf: rounding would hide it
            return {"db_change": -IDENTICAL_DB, "vs_fp32_db": 0.0, "fp32_db": _mean(ref)}
        y, img = _y255(out)
        db = _psnr(y, _hr_y(p), p.border)
        if abs(db - ref_db) > abs(change):
            change = db - ref_db
        vs_fp32 = min(vs_fp32, _psnr(img, ref_img))
    return {"db_change": change, "vs_fp32_db": vs_fp32, "fp32_db": _mean(ref)}


def _mean(ref) -> float:
    return float(np.mean([db for db, _ in ref]))


# where its speed is measured (int8), a candidate must take at most this share of fp32's time: a
# verdict is measured once and kept, and a near tie is noise (espcn-x3: 246 against 252 ms)
SPEED_MARGIN = 0.8


def passes(result: dict) -> bool:
    """Within the quality limits and, where its speed was measured (int8), clearly faster than fp32."""
    if "error" in result:
        return False
    quality_holds = abs(result["db_change"]) <= DB_LIMIT and result["vs_fp32_db"] >= MIN_PSNR_VS_FP32
    return quality_holds and result.get("ms", 0.0) <= SPEED_MARGIN * result.get("fp32_ms", math.inf)


def speed_vs_fp32(run, run_fp32, probes: list[Probe], side: int = 192, rounds: int = 3) -> dict:
    """{"ms": `run`'s least time, "fp32_ms": `run_fp32`'s} on the largest probe input tiled to
    at least `side` pixels a side, the two interleaved so a busy spell hits both."""
    x = max(probes, key=lambda p: p.x.numel()).x
    k = math.ceil(side / min(x.shape[-2:]))
    x = x.repeat(1, 1, k, k)
    times = {run: [], run_fp32: []}
    for fn in times:
        fn(x)  # first run: the kernels' own set-up
    for _ in range(rounds):
        for fn, seen in times.items():
            start = time.perf_counter()
            fn(x)
            seen.append(time.perf_counter() - start)
    return {"ms": min(times[run]) * 1e3, "fp32_ms": min(times[run_fp32]) * 1e3}


def in_words(result: dict) -> str:
    """A check's result as a reader of the terminal understands it."""
    if "error" in result:
        return f"it did not run here: {result['error']}"
    change = result["db_change"]
    vs = result["vs_fp32_db"]
    moved = ("the same as fp32's" if round(abs(change), 3) == 0 else
             f"{abs(change):.3f} dB {'lower' if change < 0 else 'higher'} than fp32")
    same = "identical to the fp32 picture" if vs >= IDENTICAL_DB else f"{vs:.1f} dB from the fp32 picture"
    speed = f", {result['ms']:.0f} ms a probe against fp32's {result['fp32_ms']:.0f}" if "ms" in result else ""
    return f"PSNR {moved} on the worst probe picture, {same}{speed}"


def checks_path(key: str) -> Path:
    """The verdicts of the weights `key` on this kind of CPU (a cache shared by several machines
    keeps each one's: a verdict holds its speed and its runtime's kernels)."""
    kind = hashlib.sha256(cpu_kind().encode()).hexdigest()[:8]
    return cache_dir() / f"{key}-cpu{kind}.checks.json"


def remembered_check(key: str, what: str, measure) -> tuple[float | dict, bool]:
    """(the value of `what` for the weights `key` - a `quality` result, or which variant ran
    fastest -, whether `measure()` made it now): read from the cache, else measured and stored."""
    path = checks_path(key)
    done = remembered(path)
    fresh = what not in done
    if fresh:
        value = measure()
        done = {what: value if isinstance(value, dict) else float(value)}
        try:
            _store(path, done)
        except OSError:
            pass  # an unwritable cache only costs the check next time
    return done[what], fresh


def _store(path: Path, new: dict) -> None:
    """Add the checks `new` to those in `path`, read and written again under the file's lock:
    two processes measuring the same weights (a job array) each kept the file as it read it
    before measuring, and the later write dropped the other's results."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with entry_lock(path.with_name(f".{path.name}.lock")):
        atomic_write_bytes(path, json.dumps({**remembered(path), **new}, indent=1).encode())


def remembered(path: Path) -> dict:
    """The checks stored in `path`, leaving out what is not a check's value (a damaged file)."""
    try:
        done = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(done, dict):
        return {}

    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    def value(k, x):  # a number, or the words of a candidate that did not run
        return number(x) or (k == "error" and isinstance(x, str))
    return {k: v for k, v in done.items()
            if number(v) or (isinstance(v, dict) and v and all(value(*kv) for kv in v.items()))}
