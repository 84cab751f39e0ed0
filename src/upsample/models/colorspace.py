"""Colour spaces inside the network (`model.colorspace` in a recipe): the model still takes and
returns float NCHW RGB in [0, 1], but converts its input to "ycbcr" or "oklab" first and its
output back to RGB last, so its layers see and predict that space.

  rgb    nothing is converted
  ycbcr  BT.601 studio-swing YCbCr, the project's constants (`data.colour`)
  oklab  Björn Ottosson's OKLab (bottosson.github.io/posts/oklab) of the linearised sRGB pixels,
         as catid's `colorspaces.py` computes it: sRGB decode, M1 to LMS, cube root, M2

The conversions are attached as forward hooks (`attach`), not as a wrapping module: the state
dict keeps the architecture's own names, so checkpoints, `--init`, pruning, interpolation and the
runtimes' layer names stay as they are for every colour space; `upsample_spec.colorspace` is what
checkpoints record, and the hooks are traced into exported graphs with the network.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from ..data.colour import rgb_to_ycbcr, ycbcr_to_rgb
from ..errors import UserError

COLORSPACES = ("rgb", "ycbcr", "oklab")

# OKLab: linear sRGB -> LMS (M1), cube root, -> Lab (M2); Ottosson's published matrices. The
# inverses are computed here, so the round trip is exact to float precision.
OKLAB_M1 = np.array([[0.4122214708, 0.5363325363, 0.0514459929],
                     [0.2119034982, 0.6806995451, 0.1073969566],
                     [0.0883024619, 0.2817188376, 0.6299787005]])
OKLAB_M2 = np.array([[0.2104542553, 0.7936177850, -0.0040720468],
                     [1.9779984951, -2.4285922050, 0.4505937099],
                     [0.0259040371, 0.7827717662, -0.8086757660]])
OKLAB_M1_INV = np.linalg.inv(OKLAB_M1)
OKLAB_M2_INV = np.linalg.inv(OKLAB_M2)


def _mix(x: torch.Tensor, m: np.ndarray) -> torch.Tensor:
    """out_i = sum_j m[i, j] x_j over the channels, in slices and scalar products: these export
    to ONNX as element-wise ops, which runtimes keep in the network's precision."""
    chans = [x[:, j:j + 1] for j in range(3)]
    return torch.cat([sum(float(m[i, j]) * chans[j] for j in range(3)) for i in range(3)], 1)


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    """The sRGB transfer function undone; values below the toe (negatives too) stay linear. The
    power's argument is clamped so the branch torch.where drops yields no NaN gradient."""
    return torch.where(x >= 0.04045, ((x.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4, x / 12.92)


def linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0.0031308, 1.055 * x.clamp_min(0.0031308) ** (1 / 2.4) - 0.055, x * 12.92)


def signed_cbrt(x: torch.Tensor) -> torch.Tensor:
    """Real cube root for negative values too (a power of a negative base is NaN); |x| is clamped
    off 0 so the gradient stays finite there (sign(0) = 0 keeps the value 0)."""
    return torch.sign(x) * x.abs().clamp_min(1e-12) ** (1 / 3)


def rgb_to_oklab(x: torch.Tensor) -> torch.Tensor:
    """NCHW sRGB in [0, 1] -> OKLab (L in [0, 1], a and b about [-0.3, 0.3])."""
    return _mix(signed_cbrt(_mix(srgb_to_linear(x), OKLAB_M1)), OKLAB_M2)


def oklab_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of `rgb_to_oklab` (unclamped)."""
    return linear_to_srgb(_mix(_mix(x, OKLAB_M2_INV) ** 3, OKLAB_M1_INV))


CONVERSIONS = {"ycbcr": (rgb_to_ycbcr, ycbcr_to_rgb), "oklab": (rgb_to_oklab, oklab_to_rgb)}


class _ToSpace:
    """Forward pre-hook: the RGB input in the colour space (a class, so deepcopy and pickling of
    the model, as EMA and DDP do, carry it)."""

    def __init__(self, space: str):
        self.space = space

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (CONVERSIONS[self.space][0](args[0]), *args[1:])


class _FromSpace(_ToSpace):
    """Forward hook: the output back to RGB."""

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return CONVERSIONS[self.space][1](output)


def attach(model: nn.Module, space: str, what: str = "model.colorspace") -> nn.Module:
    """`model` (built by the registry, `upsample_spec` set) computing in `space`: the conversion
    hooks added and the spec's colorspace set. "rgb" leaves the model as it is."""
    if space not in COLORSPACES:
        raise UserError(f"{what} must be one of {', '.join(COLORSPACES)}; got {space!r}")
    spec = model.upsample_spec
    if space == "rgb":
        return model
    if spec.kind != "generator" or spec.input != "rgb":
        taken = "a discriminator" if spec.kind != "generator" else "Y (BT.601 luma) only"
        raise UserError(f"{what} = {space!r} needs a model that takes RGB; {spec.name or spec.arch} "
                        f"takes {taken}: use an RGB variant (e.g. espcn-rgb-x2, vapsr-s-x2) or rgb")
    model.register_forward_pre_hook(_ToSpace(space))
    model.register_forward_hook(_FromSpace(space))
    model.upsample_spec = dataclasses.replace(spec, colorspace=space)
    return model
