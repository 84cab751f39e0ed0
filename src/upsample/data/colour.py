"""The edges of the tensor contract: uint8 HWC <-> float NCHW in [0, 1], and RGB <-> YCbCr.

Inside the package every image is float NCHW RGB in [0, 1]; Y-channel models see BT.601 Y.
"""

from __future__ import annotations

import numpy as np
import torch


# BT.601 "studio swing" YCbCr with R, G, B, Y, Cb, Cr all in [0, 1] (ITU-R BT.601 as in MATLAB's
# rgb2ycbcr and `metrics.rgb_to_y`, divided by 255).
YCC = np.array([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]]) / 255.0
YCC_OFFSET = np.array([16.0, 128.0, 128.0]) / 255.0
YCC_INV = np.linalg.inv(YCC)


def _mix(x: torch.Tensor, m: np.ndarray, offset: np.ndarray | None, sign: float) -> torch.Tensor:
    """out_i = sum_j m[i, j] * (x_j + sign * offset_j), written with slices so it exports to ONNX."""
    chans = [x[:, j:j + 1] for j in range(3)]
    if offset is not None and sign < 0:
        chans = [c - float(o) for c, o in zip(chans, offset)]
    out = [sum(float(m[i, j]) * chans[j] for j in range(3)) for i in range(3)]
    if offset is not None and sign > 0:
        out = [c + float(o) for c, o in zip(out, offset)]
    return torch.cat(out, 1)


def rgb_to_ycbcr(x: torch.Tensor) -> torch.Tensor:
    """NCHW RGB in [0, 1] -> YCbCr with Y in [16/255, 235/255] (BT.601)."""
    return _mix(x, YCC, YCC_OFFSET, +1.0)


def ycbcr_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of `rgb_to_ycbcr` (unclamped)."""
    return _mix(x, YCC_INV, YCC_OFFSET, -1.0)


def to_tensor(img: np.ndarray, device="cpu", dtype=torch.float32) -> torch.Tensor:
    """uint8 HWC -> float NCHW in [0, 1]."""
    return torch.from_numpy(np.array(img, copy=True)).to(device).permute(2, 0, 1)[None].to(dtype) / 255.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float NCHW (N = 1) in [0, 1] -> clamped, rounded uint8 HWC."""
    return (x[0].clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
