"""Degradations. The core is a MATLAB-exact `imresize` (bicubic, antialiased when shrinking).

MATLAB's algorithm, per dimension (imresize.m, `contributions`):
  out_len = ceil(in_len * scale) unless the size is given;
  for output pixel x = 1..out_len the source position is u = x / scale + 0.5 * (1 - 1 / scale);
  when shrinking with antialiasing the Keys kernel (a = -0.5) is widened by 1/scale and scaled by
  `scale`; taps are left = floor(u - width / 2) + 0..P-1 with P = ceil(width) + 2; weights are
  normalised to sum 1; out-of-range taps are mirrored (symmetric padding, edge repeated);
  all-zero tap columns are dropped. The dimension with the smaller scale goes first (rows on ties).
The weights (`bicubic`, torch-free, with the same resize on numpy arrays) are computed in float64
and applied as a dense matrix product, or for long dimensions as a gather + weighted sum, so
memory stays proportional to the output and any scale factor works.
"""

from __future__ import annotations

import math
import threading
from fractions import Fraction
from functools import lru_cache

import numpy as np
import torch
from cachetools import LRUCache, cached

# The kernel itself is torch-free, in `bicubic`; its names stay importable from here.
from .bicubic import (DENSE_LIMIT, WEIGHTS_CACHE_BYTES, contributions, cubic, imresize_array,  # noqa: F401
                      output_size, passes, resize_weights)
from .colour import to_tensor
from .jpeg import jpeg_batch


# `_resize_dim` reads it here, so that a test can force the gather form for small sizes.
_DENSE_LIMIT = DENSE_LIMIT


def _resize_dim(x: torch.Tensor, dim: int, out_len: int, scale: float, antialias: bool) -> torch.Tensor:
    in_len = x.shape[dim]
    if in_len * out_len <= _DENSE_LIMIT and dim >= x.dim() - 2:
        m = resize_matrix(in_len, out_len, float(scale), antialias).to(device=x.device, dtype=x.dtype)
        return torch.matmul(x, m.T) if dim == x.dim() - 1 else torch.matmul(m, x)
    idx, w = contributions(in_len, out_len, float(scale), antialias)
    taps = idx.shape[1]
    idx_t = torch.from_numpy(idx).to(x.device).reshape(-1)
    w_t = torch.from_numpy(w).to(device=x.device, dtype=x.dtype)
    gathered = x.index_select(dim, idx_t)  # (..., out_len * taps, ...) along dim
    shape = list(x.shape)
    shape[dim:dim + 1] = [out_len, taps]
    gathered = gathered.reshape(shape)
    view = [1] * gathered.dim()
    view[dim], view[dim + 1] = out_len, taps
    return (gathered * w_t.reshape(view)).sum(dim=dim + 1)


@lru_cache(maxsize=16)
def phase_kernel(scale: int) -> tuple[int, np.ndarray]:
    """imresize's upscaling by an integer factor as a filter bank: (first, W) with W of shape
    (scale, K) such that out[scale * i + p] = sum_k W[p, k] * in[i + first + k], `in` mirrored
    beyond its ends as imresize mirrors. Read off `contributions` at an interior pixel, where the
    taps and weights repeat with period `scale`."""
    n, i = 32, 16
    idx, w = contributions(n, n * scale, float(scale), True)
    rows = range(scale * i, scale * i + scale)
    offsets = [idx[r] - i for r in rows]
    first = int(min(o.min() for o in offsets))
    k = int(max(o.max() for o in offsets)) - first + 1
    bank = np.zeros((scale, k))
    for p, r in enumerate(rows):
        np.add.at(bank[p], offsets[p] - first, w[r])
    return first, bank


class BicubicUp(torch.nn.Module):
    """`imresize(x, scale)` for an integer upscaling factor as one convolution and a pixel
    shuffle: each of the scale^2 output phases is a fixed K x K filter (the outer product of two
    rows of `phase_kernel`) on the mirrored input. The same result (to float rounding) in a form
    that exports to ONNX with dynamic sizes and that runtimes run as one fast convolution.

    `mix` (C_out x C_in) and `bias` (C_out) fold a colour transform applied *before* the resize
    into the same convolution (bicubic weights sum to one, so it commutes with an affine map of
    the channels); without them each channel is resized on its own. Needs H, W >= 2 (the mirror
    padding reaches 2-3 pixels; `runtime.export.AnySideBicubicUp` takes 1)."""

    def __init__(self, scale: int, mix: np.ndarray | None = None, bias: np.ndarray | None = None):
        super().__init__()
        self.scale = s = int(scale)
        first, bank = phase_kernel(s)
        self.left, self.right = -first, first + bank.shape[1] - 1
        taps = np.einsum("pk,ql->pqkl", bank, bank).reshape(s * s, 1, *bank.shape[1:] * 2)
        self.per_channel = mix is None
        if mix is None:
            weight, b = taps, None
        else:
            mix = np.asarray(mix, dtype=np.float64)
            weight = np.einsum("oi,pakl->opikl", mix, taps).reshape(-1, mix.shape[1], *taps.shape[2:])
            b = np.repeat(np.zeros(mix.shape[0]) if bias is None else np.asarray(bias, np.float64), s * s)
        self.register_buffer("weight", torch.from_numpy(weight).float(), persistent=False)
        self.register_buffer("bias", None if b is None else torch.from_numpy(b).float(), persistent=False)

    def _mirror(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        a, b = self.left, self.right
        n = x.shape[dim]
        return torch.cat([x.narrow(dim, 0, a).flip(dim), x, x.narrow(dim, n - b, b).flip(dim)], dim)

    def phases(self, x: torch.Tensor) -> torch.Tensor:
        """The output before the pixel shuffle: (N, C_out * scale^2, H, W), the scale^2 phases of
        each output channel in turn (with `mix`; without it, of each input plane)."""
        n, c, h, w = x.shape
        if self.per_channel:
            x = x.reshape(n * c, 1, h, w)
        x = self._mirror(self._mirror(x, 2), 3)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return torch.nn.functional.conv2d(x, self.weight.to(x.dtype), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        y = torch.nn.functional.pixel_shuffle(self.phases(x), self.scale)
        return y.reshape(n, c, h * self.scale, w * self.scale) if self.per_channel else y


def imresize(x: torch.Tensor, scale: float | tuple[float, float] | None = None, *,
             size: tuple[int, int] | None = None, antialias: bool = True) -> torch.Tensor:
    """MATLAB-compatible bicubic resize of a float tensor (..., H, W), e.g. NCHW, on any device.

    Give `scale` (one factor or (sy, sx)) and/or `size` (out_h, out_w). With both, `size` sets the
    output shape and `scale` the kernel (MATLAB's imresize(A, scale) when size == ceil(scale*in)).
    With `size` alone the scale per dimension is out / in, as MATLAB's imresize(A, [h w]).
    """
    if not torch.is_floating_point(x):
        raise TypeError("imresize expects a floating-point tensor; convert uint8 at the edges")
    if x.dim() < 2:
        raise ValueError("imresize expects a tensor of shape (..., H, W)")
    for axis, out_len, s in passes(x.shape[-2], x.shape[-1], scale, size):
        x = _resize_dim(x, x.dim() + axis, out_len, s, antialias)
    return x


def imresize_any_cpu(x: torch.Tensor, scale: float | None = None, *,
                     size: tuple[int, int] | None = None) -> torch.Tensor:
    """`imresize` whose bits do not depend on the CPU or its BLAS: for float32/float64 CPU tensors
    numpy's taps added in order (`bicubic.imresize_array`, the torch-free fast path's code), else
    torch's. What `--model bicubic` and eval's bicubic baseline compute, so the two agree."""
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(imresize_array(x.numpy(), scale, size=size))
    return imresize(x, scale, size=size)


def imresize_np(img: np.ndarray, scale: float | None = None, *, size: tuple[int, int] | None = None,
                antialias: bool = True) -> np.ndarray:
    """`imresize` for numpy images HW or HWC. uint8 in -> uint8 out (rounded, clipped), as MATLAB;
    float in -> float64 out, unclipped."""
    is_uint8 = img.dtype == np.uint8
    arr = np.asarray(img, dtype=np.float64)
    if is_uint8:
        arr = arr / 255.0
    t = torch.from_numpy(np.ascontiguousarray(arr))
    t = t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1)
    out = imresize(t, scale, size=size, antialias=antialias)
    out = out[0] if img.ndim == 2 else out.permute(1, 2, 0)
    res = out.numpy()
    if is_uint8:
        return array_to_uint8(res)
    return res


def array_to_uint8(img01: np.ndarray) -> np.ndarray:
    """[0, 1] float image -> uint8 with rounding, as a saved PNG would be."""
    return np.clip(np.round(np.asarray(img01) * 255.0), 0, 255).astype(np.uint8)


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round a [0, 1] tensor to the 8-bit grid (what saving to PNG and reading back does)."""
    return torch.round(x.clamp(0, 1) * 255.0) / 255.0


# --- Training degradations beyond bicubic (blur + subsample, noise, JPEG) ---------------------
# All take and return float NCHW in [0, 1]; randomness only through an explicit generator.

def gaussian_radius(sigma: float) -> int:
    """How far the default Gaussian of `sigma` reaches: ceil(3 sigma) pixels each side, which
    `gaussian_blur` needs the image's sides to exceed."""
    return int(math.ceil(3.0 * sigma))


def gaussian_kernel(sigma: float, size: int | None = None) -> torch.Tensor:
    """Normalised 1-D Gaussian (float64); `size` defaults to 2 * `gaussian_radius` + 1."""
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    if size is None:
        size = 2 * gaussian_radius(sigma) + 1
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def gaussian_blur(x: torch.Tensor, sigma: float, size: int | None = None) -> torch.Tensor:
    """Separable isotropic Gaussian blur of NCHW with mirror (reflect) padding at the borders."""
    g = gaussian_kernel(sigma, size).to(device=x.device, dtype=x.dtype)
    k, c = g.numel(), x.shape[1]
    pad = k // 2
    if pad >= min(x.shape[-2:]):
        raise ValueError(f"blur kernel of {k} px is too large for a {tuple(x.shape[-2:])} image")
    y = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    y = torch.nn.functional.conv2d(y, g.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)
    return torch.nn.functional.conv2d(y, g.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)


def blur_subsample(x: torch.Tensor, scale: int, sigma: float) -> torch.Tensor:
    """ESPCN's LR: Gaussian blur, then keep every `scale`-th pixel, starting at (scale - 1) // 2
    so that for odd scales each LR pixel sits at the centre of its scale x scale HR block."""
    off = (int(scale) - 1) // 2
    return gaussian_blur(x, sigma)[..., off::int(scale), off::int(scale)]


def add_noise(x: torch.Tensor, sigma255: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Additive white Gaussian noise with standard deviation `sigma255` on the 0-255 scale."""
    noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x)
    return x + noise * (sigma255 / 255.0)


def jpeg(x: torch.Tensor, quality) -> torch.Tensor:
    """JPEG round trip of each RGB (4:2:0) or single-channel image of NCHW `x` in [0, 1] at
    `quality` (one for all, or one per image): libjpeg-turbo's codec as Pillow's save and open
    run it, in torch on x's device (`jpeg.jpeg_batch`)."""
    q = torch.as_tensor(quality).expand(x.shape[0])
    # decoded to float32, as the Pillow round trip it replaces did: a float64 batch keeps its LR
    return jpeg_batch(quantize(x).mul(255.0).round(), q).to(torch.float32).div(255.0).to(x.dtype)


def dropout_boxes(holes: int, size: tuple[int, int], h: int, w: int,
                  generator: torch.Generator | None = None) -> list[tuple[int, int, int, int]]:
    """`holes` rectangles (y0, x0, height, width) in an h x w image: sides drawn uniformly from
    `size` (clipped to the image), positions uniform."""
    boxes = []
    for _ in range(holes):
        hh, ww = (min(int(torch.randint(size[0], size[1] + 1, (1,), generator=generator)), n)
                  for n in (h, w))
        y0 = int(torch.randint(0, h - hh + 1, (1,), generator=generator))
        x0 = int(torch.randint(0, w - ww + 1, (1,), generator=generator))
        boxes.append((y0, x0, hh, ww))
    return boxes


_matrix_cache = LRUCache(maxsize=WEIGHTS_CACHE_BYTES, getsizeof=lambda t: t.numel() * t.element_size())


@cached(_matrix_cache, lock=threading.Lock())
def resize_matrix(in_len: int, out_len: int, scale: float, antialias: bool = True) -> torch.Tensor:
    """`bicubic.resize_weights` as a float64 tensor (its own copy: the cached array is read-only)."""
    return torch.tensor(resize_weights(in_len, out_len, scale, antialias))


def drop_resize_caches() -> None:
    """Empty the caches of dense resize weights (remade when next needed): what a memory budget
    should not count as held."""
    resize_matrix.cache_clear()  # under the caches' locks: --jobs threads may be filling them
    resize_weights.cache_clear()


# --- The evaluation protocol's LR: modcrop, MATLAB bicubic down, rounded to uint8 -------------

def scale_period(scale: float) -> tuple[int, int]:
    """(p, q) with scale = p / q, so that HR sizes that are multiples of p give integer LR sizes."""
    frac = Fraction(scale).limit_denominator(100)
    return frac.numerator, frac.denominator


def modcrop(img: np.ndarray, scale: float) -> np.ndarray:
    p, _ = scale_period(scale)
    h, w = img.shape[0] - img.shape[0] % p, img.shape[1] - img.shape[1] % p
    return img[:h, :w]


def make_lr(hr: np.ndarray, scale: float, device="cpu") -> torch.Tensor:
    """The standard LR input: MATLAB bicubic downscale of the modcropped HR, rounded to uint8."""
    p, q = scale_period(scale)
    h, w = hr.shape[0] * q // p, hr.shape[1] * q // p
    hr_t = to_tensor(hr, device, torch.float64)
    return quantize(imresize(hr_t, 1.0 / scale, size=(h, w))).float()
