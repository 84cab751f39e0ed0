"""Training pairs made a whole batch at a time on the training device, from an `ImageStore`.

The same samples as `pairs.PairDataset`: the sample with global index k takes its image, crop,
blur and flips from the same draws (`pairs.uniforms(seed, k)`, the epoch permutation), so a run
may switch between the two pipelines and continue exactly. What differs is where and how: the
store's pixels live on the device (memory-mapped on the CPU, copied once to a GPU), the batch's
regions (patch plus `margin` LR pixels of context, mirrored at image borders as MATLAB's
imresize mirrors) are one gather of precomputed indices, and the LR is one batched `imresize`
(or one grouped Gaussian convolution per batch), in float32; flips and the transpose are
`torch.where`s. JPEG is libjpeg-turbo's codec in integer torch arithmetic (`jpeg.py`: the
same code as PairDataset's), on the samples that draw it; noise comes from a generator on the
device seeded by the batch's first sample, and coarse dropout's rectangles from the draws'
columns (both the same law as PairDataset's, other values). No per-sample Python, and on CUDA
only the batch's few draws cross from the host.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from . import degrade
from .pairs import (_FLIP_H, _FLIP_W, _NOISE, _NOISE_SEED, _NOISE_SIGMA, _SIGMA, _TRANSPOSE, _X, _Y, PairSpec,
                    black_out, dropout_boxes_drawn, dropout_columns, jpeg_drawn, rgb_to_y01, uniforms)
from .store import ImageStore


def mirror(coords: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """Indices into [0, length) of coordinates up to one length outside it, mirrored with the
    edge repeated (numpy's 'symmetric', MATLAB imresize's padding)."""
    coords = torch.where(coords < 0, -coords - 1, coords)
    return torch.where(coords >= length, 2 * length - 1 - coords, coords)


def gaussian_blur_each(x: torch.Tensor, sigmas: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """`degrade.gaussian_blur` of each image of NCHW `x` with its own sigma (<= `max_sigma`),
    as one grouped convolution: each kernel has the size of max_sigma's, zero beyond its own
    support (max_sigma is a host number: no device sync)."""
    n, c = x.shape[:2]
    pad = int(math.ceil(3.0 * max_sigma))
    k = 2 * pad + 1
    if pad >= min(x.shape[-2:]):
        raise ValueError(f"blur kernel of {k} px is too large for a {tuple(x.shape[-2:])} image")
    t = torch.arange(k, device=x.device, dtype=x.dtype) - pad
    own = torch.ceil(3.0 * sigmas).to(x.dtype)[:, None]
    g = torch.exp(-(t * t) / (2.0 * sigmas[:, None] ** 2)) * (t.abs() <= own)
    g = (g / g.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (n * c, k)
    y = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect").reshape(1, n * c, *[
        s + 2 * pad for s in x.shape[-2:]])
    y = torch.nn.functional.conv2d(y, g.view(n * c, 1, k, 1), groups=n * c)
    y = torch.nn.functional.conv2d(y, g.view(n * c, 1, 1, k), groups=n * c)
    return y.reshape(n, c, *x.shape[-2:])


class DeviceBatches:
    """(input, target) batches on `device` for lists of sample indices, as `PairDataset` makes
    them (the same crops, flips and blur draws). `dtype` is the precision of the degradation:
    float32 (PairDataset's float64 gives the same LR to float32 rounding, at several times the
    cost)."""

    def __init__(self, store: ImageStore, spec: PairSpec, *, seed: int, device: torch.device,
                 dtype: torch.dtype | None = None):
        spec.check_patch()
        self.spec, self.seed, self.device = spec, seed, torch.device(device)
        self.dtype = dtype or torch.float32
        need = max(spec.core(s) for s in spec.scales)
        keep = np.flatnonzero(np.minimum(store.heights, store.widths) >= need)
        self.skipped = len(store) - len(keep)
        self.keep = keep
        # per kept image: offset, height, width (host copies for the draws, device copies to index)
        self.geometry = np.stack([store.offsets[keep], store.heights[keep], store.widths[keep]])
        self.geometry_dev = torch.from_numpy(self.geometry).to(self.device)
        self.pixels = torch.from_numpy(store.pixels).to(self.device) if len(keep) else None
        self._perms: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.keep)

    def image_indices(self, ks: np.ndarray) -> np.ndarray:
        """`PairDataset.image_index` of each k: epoch k // n visits every image once, in a
        permutation seeded by (seed, epoch)."""
        n = len(self.keep)
        epochs = ks // n
        out = np.empty(len(ks), dtype=np.int64)
        for e in np.unique(epochs):
            if int(e) not in self._perms:
                if len(self._perms) > 4:
                    self._perms.clear()
                self._perms[int(e)] = np.random.default_rng([self.seed, int(e), 1]).permutation(n)
            sel = epochs == e
            out[sel] = self._perms[int(e)][ks[sel] % n]
        return out

    def regions(self, ks: np.ndarray, u: np.ndarray, s: int) -> torch.Tensor:
        """uint8 (B, 3, side, side): each sample's patch with `margin` LR pixels around it."""
        sp = self.spec
        core, m = sp.core(s), sp.margin(s)
        side = core + 2 * m * s
        img = self.image_indices(ks)
        _, h, w = self.geometry[:, img]
        y0 = (u[:, _Y] * (h - core + 1)).astype(np.int64) - m * s
        x0 = (u[:, _X] * (w - core + 1)).astype(np.int64) - m * s
        corner = torch.from_numpy(np.stack([img, y0, x0])).to(self.device, non_blocking=True)
        off, hh, ww = self.geometry_dev[:, corner[0]]
        span = torch.arange(side, device=self.device)
        rows = mirror(corner[1, :, None] + span, hh[:, None])             # (B, side)
        cols = mirror(corner[2, :, None] + span, ww[:, None])
        row_starts = rows * (3 * ww[:, None]) + off[:, None]               # (B, side)
        col_offsets = (3 * cols[:, :, None] + torch.arange(3, device=self.device)).flatten(1)
        idx = row_starts[:, :, None] + col_offsets[:, None, :]            # (B, side, side * 3)
        return self.pixels.take(idx).view(len(ks), side, side, 3).permute(0, 3, 1, 2)

    def make_batch(self, ks, s: int) -> tuple[torch.Tensor, torch.Tensor]:
        sp = self.spec
        ks = np.asarray(ks, dtype=np.int64)
        u = uniforms(self.seed, ks, dropout_columns(sp))
        core, m = sp.core(s), sp.margin(s)
        full = self.regions(ks, u, s).to(self.dtype).div_(255.0)
        lr = self.add_noise(self.degrade(full, u, s), u)
        lr = jpeg_drawn(degrade.quantize(lr), sp, u)
        n = core // s
        lr = black_out(lr[..., m:m + n, m:m + n], dropout_boxes_drawn(sp, u, n, n))
        hr = full[..., m * s:m * s + core, m * s:m * s + core]
        if sp.y_channel:  # per-pixel and linear: commutes with the flips and the upscale below
            lr, hr = rgb_to_y01(lr), rgb_to_y01(hr)
        lr, hr = lr.float(), hr.float()
        draws = torch.from_numpy(u[:, [_FLIP_W, _FLIP_H, _TRANSPOSE]] < 0.5).to(self.device)
        for j, enabled, op in ((0, sp.flip, lambda t: t.flip(-1)), (1, sp.flip, lambda t: t.flip(-2)),
                               (2, sp.rot90, lambda t: t.transpose(-1, -2))):
            if enabled:
                sel = draws[:, j].view(-1, 1, 1, 1)
                lr, hr = torch.where(sel, op(lr), lr), torch.where(sel, op(hr), hr)
        inp = lr
        if sp.pre_upsample:  # in float32 on Y, as the Upscaler does it at evaluation
            inp = degrade.imresize(lr, float(s), size=(core, core))[..., :sp.patch, :sp.patch]
            hr = hr[..., :sp.patch, :sp.patch]
        return inp.contiguous(), hr.contiguous()

    def degrade(self, full: torch.Tensor, u: np.ndarray, s: int) -> torch.Tensor:
        """The LR of the regions: MATLAB bicubic, or ESPCN's blur + subsample."""
        sp = self.spec
        if sp.kind != "gaussian":
            return degrade.imresize(full, 1.0 / s)
        lo, hi = sp.blur_sigma
        sigmas = torch.from_numpy(lo + (hi - lo) * u[:, _SIGMA]).to(self.device, self.dtype)
        off = (int(s) - 1) // 2
        return gaussian_blur_each(full, sigmas, hi)[..., off::int(s), off::int(s)]

    def add_noise(self, lr: torch.Tensor, u: np.ndarray) -> torch.Tensor:
        """Gaussian noise on the samples that draw it, each with its drawn sigma (0-255 units)."""
        sp = self.spec
        chosen = u[:, _NOISE] < sp.noise_prob
        if not chosen.any():
            return lr
        lo, hi = sp.noise_sigma
        sigmas = np.where(chosen, lo + (hi - lo) * u[:, _NOISE_SIGMA], 0.0) / 255.0
        gen = torch.Generator(self.device).manual_seed(int(u[0, _NOISE_SEED] * 2 ** 53))
        noise = torch.randn(lr.shape, generator=gen, device=self.device, dtype=lr.dtype)
        return lr + noise * torch.from_numpy(sigmas).to(self.device, lr.dtype).view(-1, 1, 1, 1)

