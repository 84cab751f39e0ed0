"""LPIPS v0.1 (Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric", CVPR 2018), computed here from two user-provided files; nothing is downloaded.

  d(x, y) = sum_l mean_hw( sum_c w_lc (f_l(x)_chw / |f_l(x)_hw| - f_l(y)_chw / |f_l(y)_hw|)^2 )

x and y are RGB in [0, 1], mapped to [-1, 1] and then through the "scaling layer"
((v - shift) / scale, shift = (-.030, -.088, -.188), scale = (.458, .448, .450)); f_l are the
ReLU outputs of an ImageNet backbone (AlexNet: relu1..relu5; VGG16: relu1_2, relu2_2, relu3_3,
relu4_3, relu5_3), |.| the L2 norm over channels (+1e-10), w_l the learned non-negative
linear weights. Lower is more similar; d(x, x) = 0.

The files: the linear weights `alex.pth` or `vgg.pth` of the lpips package (weights/v0.1/, keys
lin0.model.1.weight .. lin4.model.1.weight) and torchvision's ImageNet backbone of the same kind
(alexnet-owt-7be5be79.pth or vgg16-397923af.pth). Pass them with `upsample eval --lpips
--lpips-weights FILE --lpips-backbone FILE` or set UPSAMPLE_LPIPS_WEIGHTS / UPSAMPLE_LPIPS_BACKBONE.
Without them LPIPS is unavailable (one error line saying so); no other distance stands in for it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import nn

from ..models import features
from ..errors import UserError

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
TAPS = {"alex": ("relu1", "relu2", "relu3", "relu4", "relu5"),
        "vgg": ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")}
CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}
BACKBONE = {"alex": "alexnet", "vgg": "vgg16"}
ENV_WEIGHTS, ENV_BACKBONE = "UPSAMPLE_LPIPS_WEIGHTS", "UPSAMPLE_LPIPS_BACKBONE"
UNAVAILABLE = ("LPIPS is unavailable: it needs the LPIPS v0.1 linear weights (alex.pth or vgg.pth from "
               "the lpips package's weights/v0.1/) and torchvision's ImageNet backbone of the same kind "
               "(alexnet-owt-7be5be79.pth or vgg16-397923af.pth); pass --lpips-weights FILE and "
               f"--lpips-backbone FILE or set {ENV_WEIGHTS} and {ENV_BACKBONE}")


class LPIPS(nn.Module):
    """LPIPS distance between float NCHW RGB images in [0, 1]: one value per image pair."""

    def __init__(self, net: str, backbone: nn.Sequential, lins: list[torch.Tensor]):
        super().__init__()
        _, names = features.torchvision_features(BACKBONE[net])
        cuts = [names.index(t) + 1 for t in TAPS[net]]
        self.net = net
        self.slices = nn.ModuleList(backbone[a:b] for a, b in zip([0, *cuts[:-1]], cuts))
        for i, w in enumerate(lins):
            self.register_buffer(f"lin{i}", w.reshape(1, -1, 1, 1).float())
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))
        self.min_side = min_side([m for sl in self.slices for m in sl])
        self.requires_grad_(False)
        self.eval()

    def _feats(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = ((x * 2 - 1) - self.shift) / self.scale
        out = []
        for sl in self.slices:
            h = sl(h)
            out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if min(h, w) < self.min_side:  # the backbone's last tap would have no pixel left
            raise UserError(f"LPIPS ({self.net}) needs images of at least {self.min_side}x{self.min_side} "
                            f"pixels after the border crop, got {w}x{h}; remove such small images from --data "
                            "(or lower --crop)")
        d = 0
        for i, (fx, fy) in enumerate(zip(self._feats(x), self._feats(y))):
            d = d + ((fx - fy).pow(2) * getattr(self, f"lin{i}")).sum(1).mean((1, 2))
        return d


def min_side(layers: list[nn.Module]) -> int:
    """The least image side that leaves at least one pixel after every conv and pooling of
    `layers` (AlexNet to relu5: 31; VGG16 to relu5_3: 16)."""
    def first(v):
        return v[0] if isinstance(v, tuple) else v

    def left(n: int) -> int:
        for m in layers:
            if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
                n = (n + 2 * first(m.padding) - first(m.kernel_size)) // first(m.stride) + 1
                if n < 1:
                    return 0
        return n
    return next(n for n in range(1, 4096) if left(n) >= 1)


def read_lins(path: str) -> tuple[str, list[torch.Tensor]]:
    """(net, the five linear weight vectors) of an LPIPS v0.1 weights file."""
    from ..models.checkpoint import read_state
    state, _ = read_state(path)
    lins = {}
    for k, v in state.items():
        m = re.fullmatch(r"(?:module\.)?lin(\d)\.model(?:\.1)?\.weight", k)
        if m:
            lins[int(m.group(1))] = v.reshape(-1)
    chans = tuple(lins[i].numel() for i in sorted(lins))
    net = next((n for n, c in CHANNELS.items() if c == chans and sorted(lins) == list(range(5))), None)
    if net is None:
        raise UserError(f"--lpips-weights {path}: {_not_lins_why(state, len(lins))}")
    return net, [lins[i] for i in range(5)]


def _not_lins_why(state: dict, n_lins: int) -> str:
    """What an --lpips-weights file that is not alex/vgg v0.1 linear weights is, where it can tell."""
    backbone = features.torchvision_arch_of(features.features_part(state))
    if backbone:
        return (f"torchvision's {backbone} backbone, not LPIPS v0.1 linear weights: give it as "
                "--lpips-backbone (were the two files swapped?)")
    if n_lins == 7:
        return "SqueezeNet LPIPS (squeeze.pth) is not supported; use alex.pth or vgg.pth"
    return (f"not LPIPS v0.1 linear weights (expected lin0..lin4 with channels {CHANNELS['alex']} (alex) "
            f"or {CHANNELS['vgg']} (vgg))")


def load_lpips(weights: str | None = None, backbone: str | None = None) -> LPIPS:
    """LPIPS from the two files (arguments, else the environment variables); UserError if absent."""
    weights = weights or os.environ.get(ENV_WEIGHTS, "")
    backbone = backbone or os.environ.get(ENV_BACKBONE, "")
    if not weights or not backbone:
        raise UserError(UNAVAILABLE)
    for p in (weights, backbone):
        if not Path(p).is_file():
            raise UserError(f"{p} {'is a folder' if Path(p).is_dir() else 'not found'}; {UNAVAILABLE}")
    net, lins = read_lins(weights)
    # the backbone must be the kind the linear weights were trained on (alex.pth: AlexNet)
    seq = features.load_torchvision_features(BACKBONE[net], backbone, f"--lpips-backbone (for {net}.pth)")
    return LPIPS(net, seq, lins)
