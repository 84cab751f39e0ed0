"""MATLAB's bicubic `imresize`, torch-free: its weights, the order of its two 1-D passes, and the
resize itself on numpy arrays (`imresize_array`).

`degrade.imresize` (torch) is built on the same weights and passes: a product with the dense
(out x in) weight matrix, or for long dimensions a gather of the taps and a weighted sum, each
the library's own (BLAS) order of adding. numpy's form adds the taps one by one in a fixed order,
each product and sum a single IEEE operation, so its bits are the same on every CPU; on one
thread it is 3-11x faster than torch's from ~500 px up, and slower on small tiles (64 px x2: 0.35
against 0.16 ms; 128 px x4: 7.7 against 2.8 ms). It runs
where torch is not worth importing, `upsample image --model bicubic`
(`inference.fastpath.BicubicEngine`), and for the full path's bicubic on the CPU
(`inference.upscaler.BicubicUpscaler`), so the two write the same bytes: the BLAS products of
oneMKL and OpenBLAS differ in the last bit of float32 results, about 1 in 3,000 16-bit values
at x2 on an AVX2 CPU (AMD EPYC, Zen 3), where the AVX-512 ones happened to agree.
"""

from __future__ import annotations

import math
import threading
from functools import lru_cache

import numpy as np
from cachetools import LRUCache, cached

# Up to this many (out x in) weights per dimension torch's `degrade.imresize` uses a dense matrix
# product (BLAS), several times faster there than its gather form, which keeps memory
# proportional to the output.
DENSE_LIMIT = 1 << 22


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys cubic convolution kernel with a = -0.5 (MATLAB's `cubic`)."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return ((1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2)))


@lru_cache(maxsize=256)
def contributions(in_len: int, out_len: int, scale: float, antialias: bool = True
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Tap indices (0-based, mirrored into range) and float64 weights, each (out_len, P)."""
    kernel_width = 4.0
    if scale < 1 and antialias:
        kernel_width /= scale
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - kernel_width / 2.0)
    taps = int(math.ceil(kernel_width)) + 2
    idx = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]  # 1-based like MATLAB
    dist = u[:, None] - idx
    if scale < 1 and antialias:
        weights = scale * cubic(dist * scale)
    else:
        weights = cubic(dist)
    weights = weights / weights.sum(axis=1, keepdims=True)
    # Symmetric (mirror) boundary: aux = [1..n, n..1], index = aux[(idx - 1) mod 2n].
    aux = np.concatenate([np.arange(in_len), np.arange(in_len)[::-1]])
    idx0 = aux[np.mod(idx.astype(np.int64) - 1, 2 * in_len)]
    keep = np.any(weights != 0, axis=0)
    return np.ascontiguousarray(idx0[:, keep]), np.ascontiguousarray(weights[:, keep])


# Dense weight matrices take up to 32 MB each (DENSE_LIMIT float64 weights): the cache keeps the
# latest up to this many bytes, not a count - 64 of them kept gigabytes of a folder of odd sizes,
# and --max-memory saw them as held. `degrade.drop_resize_caches` empties it.
WEIGHTS_CACHE_BYTES = 128 << 20
weights_cache = LRUCache(maxsize=WEIGHTS_CACHE_BYTES, getsizeof=lambda m: m.nbytes)


@cached(weights_cache, lock=threading.Lock())
def resize_weights(in_len: int, out_len: int, scale: float, antialias: bool = True) -> np.ndarray:
    """The (out_len, in_len) float64 matrix of imresize along one dimension (mirrored taps added)."""
    idx, w = contributions(in_len, out_len, float(scale), antialias)
    m = np.zeros((out_len, in_len), dtype=np.float64)
    np.add.at(m, (np.repeat(np.arange(out_len), idx.shape[1]), idx.reshape(-1)), w.reshape(-1))
    m.flags.writeable = False  # cached and shared: read only
    return m


def output_size(in_size: int, scale: float) -> int:
    """MATLAB's output length for a scale factor: ceil(in * scale), guarded against fp noise."""
    return int(math.ceil(round(in_size * scale, 9)))


def passes(in_h: int, in_w: int, scale: float | tuple[float, float] | None = None,
           size: tuple[int, int] | None = None) -> list[tuple[int, int, float]]:
    """imresize's two 1-D passes in MATLAB's order: (axis, counted from the end: -2 rows, -1
    columns; output length; scale of the kernel). Give `scale` (one factor or (sy, sx)) and/or
    `size` (out_h, out_w): with both, `size` sets the output shape and `scale` the kernel; with
    `size` alone the scale per dimension is out / in, as MATLAB's imresize(A, [h w])."""
    if scale is None and size is None:
        raise ValueError("imresize needs scale or size")
    if scale is not None:
        sy, sx = (scale, scale) if isinstance(scale, (int, float)) else scale
        if sy <= 0 or sx <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
    if size is None:
        size = (output_size(in_h, sy), output_size(in_w, sx))
    elif scale is None:
        sy, sx = size[0] / in_h, size[1] / in_w
    out_h, out_w = int(size[0]), int(size[1])
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"output size must be positive, got {out_h}x{out_w}")
    steps = [(-2, out_h, float(sy)), (-1, out_w, float(sx))]
    # MATLAB resizes the dimension with the smaller scale first; rows first on ties.
    return steps[::-1] if sx < sy else steps


def _resize_axis(x: np.ndarray, axis: int, out_len: int, scale: float, antialias: bool) -> np.ndarray:
    """One pass of `imresize_array`: the taps added in order (see the module docstring)."""
    idx, w = contributions(x.shape[axis], out_len, scale, antialias)
    w = w.astype(x.dtype)
    view = [1] * x.ndim
    view[axis] = out_len
    out = np.take(x, idx[:, 0], axis=axis)
    out *= w[:, 0].reshape(view)
    for k in range(1, idx.shape[1]):
        term = np.take(x, idx[:, k], axis=axis)
        term *= w[:, k].reshape(view)
        out += term
    return out


def imresize_array(x: np.ndarray, scale: float | tuple[float, float] | None = None, *,
                   size: tuple[int, int] | None = None, antialias: bool = True) -> np.ndarray:
    """`degrade.imresize` of a float numpy array (..., H, W), e.g. CHW, in its own float type."""
    if not np.issubdtype(x.dtype, np.floating) or x.ndim < 2:
        raise TypeError(f"imresize_array expects a float array (..., H, W), got {x.dtype} {x.shape}")
    for axis, out_len, s in passes(x.shape[-2], x.shape[-1], scale, size):
        x = _resize_axis(x, axis, out_len, s, antialias)
    return x
