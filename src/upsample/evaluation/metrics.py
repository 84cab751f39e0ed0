"""Image quality metrics as pure functions of arrays (the papers' MATLAB protocol).

Inputs are uint8 images as a user would save them: HWC RGB or HW gray. With `y_channel` the
metric is taken on the Y of BT.601 YCbCr in the 16-235 range,
    Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255,   R, G, B in [0, 1],
in float64 on the 0-255 scale, after cropping `crop_border` pixels at each side.
SSIM (Wang et al. 2004): 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, 'valid' filtering;
for RGB the mean over channels. `window="uniform"` is scikit-image's `structural_similarity`
with its defaults instead (the SSIM of catid's evaluate.py): a 7x7 mean filter, the sample
covariance (N / (N - 1)), and the map averaged away from a 3 pixel border - which is the 'valid'
7x7 filtering here.
"""

from __future__ import annotations

import numpy as np

_Y_COEFFS = np.array([65.481, 128.553, 24.966], dtype=np.float64)


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """uint8 (or 0-255 float) RGB HWC -> float64 Y in [16, 235]; HW gray is treated as R=G=B."""
    arr = np.asarray(img, dtype=np.float64)
    if arr.ndim == 2:
        return 16.0 + arr * (_Y_COEFFS.sum() / 255.0)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB HWC or gray HW image, got shape {arr.shape}")
    return 16.0 + arr @ (_Y_COEFFS / 255.0)


def _prepare(img1: np.ndarray, img2: np.ndarray, crop_border: int, y_channel: bool
             ) -> tuple[np.ndarray, np.ndarray]:
    if img1.shape != img2.shape:
        raise ValueError(f"image shapes differ: {img1.shape} vs {img2.shape}")
    if y_channel:
        a, b = rgb_to_y(img1), rgb_to_y(img2)
    else:
        a, b = np.asarray(img1, np.float64), np.asarray(img2, np.float64)
    if crop_border:
        c = int(crop_border)
        a, b = a[c:-c, c:-c], b[c:-c, c:-c]
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    return a, b


def psnr(img1: np.ndarray, img2: np.ndarray, *, crop_border: int = 0, y_channel: bool = True) -> float:
    """PSNR in dB with peak 255 (inf for identical images)."""
    a, b = _prepare(img1, img2, crop_border, y_channel)
    mse = np.mean((a - b) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0 ** 2 / mse))


SSIM_SIDE = {"gaussian": 11, "uniform": 7}  # the windows' sides: the least an image must keep


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of (H, W, ...) with the 1-D kernel g along H then W."""
    k = len(g)
    h, w = img.shape[0] - k + 1, img.shape[1] - k + 1
    rows = sum(g[i] * img[i:i + h] for i in range(k))
    return sum(g[j] * rows[:, j:j + w] for j in range(k))


WINDOWS = ("gaussian", "uniform")


def ssim(img1: np.ndarray, img2: np.ndarray, *, crop_border: int = 0, y_channel: bool = True,
         window: str = "gaussian") -> float:
    """Mean SSIM (mean over channels for RGB); `window` "gaussian" (Wang et al.) or "uniform"
    (scikit-image's defaults), see the module docstring."""
    a, b = _prepare(img1, img2, crop_border, y_channel)
    if window not in WINDOWS:
        raise ValueError(f"unknown SSIM window {window!r}; known: {', '.join(WINDOWS)}")
    g = _gaussian_window() if window == "gaussian" else np.full(SSIM_SIDE[window], 1 / SSIM_SIDE[window])
    if min(a.shape[:2]) < len(g):
        raise ValueError(f"SSIM needs at least {len(g)}x{len(g)} pixels after cropping, got {a.shape[:2]}")
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    cov = 1.0 if window == "gaussian" else 49 / 48  # scikit-image: unbiased (sample) covariance
    mu1, mu2 = _filter_valid(a, g), _filter_valid(b, g)
    s11 = cov * (_filter_valid(a * a, g) - mu1 ** 2)
    s22 = cov * (_filter_valid(b * b, g) - mu2 ** 2)
    s12 = cov * (_filter_valid(a * b, g) - mu1 * mu2)
    ssim_map = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1 ** 2 + mu2 ** 2 + c1) * (s11 + s22 + c2))
    return float(ssim_map.mean(axis=(0, 1)).mean())
