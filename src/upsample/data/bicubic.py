"""MATLAB's bicubic `imresize`, torch-free: its weights, the order of its two 1-D passes, and the
resize itself on numpy arrays (`imresize_array`).

`degrade.imresize` (torch) is built on the same weights and passes, with the same two forms per
pass: a product with the dense (out x in) weight matrix, or for long dimensions a gather of the
taps and a weighted sum. numpy's form runs where torch is not worth importing: `upsample image
--model bicubic` (`inference.fastpath.BicubicEngine`) needs nothing else, and `import torch` alone
takes longer on a small CPU than reading, resizing and writing a photo. Both compute in the
input's float type, and for upscaling the same way, but the matrix product is each library's BLAS
(torch's oneMKL, numpy's OpenBLAS): where one splits a long row of the product into blocks and the
other does not, a float32 result differs in its last bit (after rounding to 8 bits, about one
value in 4 million at x2 on the benchmark images, none seen at x3 or x4). A downscale's gather
sums more taps than torch adds one by one, so there the two differ more often.
"""

from __future__ import annotations

import math
import threading
from functools import lru_cache

import numpy as np
from cachetools import LRUCache, cached

# Up to this many (out x in) weights per dimension a dense matrix product (BLAS) is used; it is
# several times faster than the gather form, which keeps memory proportional to the output.
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
    """One pass of `imresize_array`, in the form `degrade._resize_dim` takes for the same sizes."""
    in_len = x.shape[axis]
    if in_len * out_len <= DENSE_LIMIT:
        m = resize_weights(in_len, out_len, scale, antialias).astype(x.dtype)
        return np.matmul(x, m.T) if axis == -1 else np.matmul(m, x)
    idx, w = contributions(in_len, out_len, scale, antialias)
    taps = idx.shape[1]
    gathered = np.take(x, idx.reshape(-1), axis=axis)  # (..., out_len * taps, ...) along axis
    shape = list(x.shape)
    pos = axis % x.ndim
    shape[pos:pos + 1] = [out_len, taps]
    view = [1] * len(shape)
    view[pos], view[pos + 1] = out_len, taps
    return (gathered.reshape(shape) * w.astype(x.dtype).reshape(view)).sum(axis=pos + 1)


def imresize_array(x: np.ndarray, scale: float | tuple[float, float] | None = None, *,
                   size: tuple[int, int] | None = None, antialias: bool = True) -> np.ndarray:
    """`degrade.imresize` of a float numpy array (..., H, W), e.g. CHW, in its own float type."""
    if not np.issubdtype(x.dtype, np.floating) or x.ndim < 2:
        raise TypeError(f"imresize_array expects a float array (..., H, W), got {x.dtype} {x.shape}")
    for axis, out_len, s in passes(x.shape[-2], x.shape[-1], scale, size):
        x = _resize_axis(x, axis, out_len, s, antialias)
    return x
