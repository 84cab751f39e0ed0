"""VDSR (Kim et al. 2016, "Accurate Image Super-Resolution Using Very Deep Convolutional Networks").

20 conv 3x3 layers of 64 channels with ReLU between them, and a global residual: the network
refines an image that was already upscaled by bicubic interpolation (the caller does that with
`degrade.imresize`), so one network serves every scale and input and output have the same size.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .state_keys import count_indices, rename_keys, shape


class VDSR(nn.Module):
    def __init__(self, *, num_in_ch: int = 1, num_feat: int = 64, num_layers: int = 20, bias: bool = True):
        super().__init__()
        if num_layers < 3:
            raise ValueError(f"VDSR needs at least 3 layers, got {num_layers}")
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, padding=1, bias=bias)
        self.body = nn.ModuleList(nn.Conv2d(num_feat, num_feat, 3, padding=1, bias=bias)
                                  for _ in range(num_layers - 2))
        self.conv_last = nn.Conv2d(num_feat, num_in_ch, 3, padding=1, bias=bias)
        for m in self.modules():  # He initialisation, as in the paper
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x):
        """x: the bicubic-upscaled image; returns x plus the predicted residual."""
        feat = F.relu(self.conv_first(x))
        for conv in self.body:
            feat = F.relu(conv(feat))
        return x + self.conv_last(feat)


# ------------------------------------------------------------------ recognising state dicts


def detect(state: dict[str, torch.Tensor]) -> dict | None:
    """VDSR's constructor keywords when `state` is one, else None."""
    keys = set(state)
    # a 4-d body.0.weight: a conv layer (RRDBNet's and VapSR's body.0 are blocks, not convs)
    if not ({"conv_first.weight", "body.0.weight", "conv_last.weight"} <= keys
            and len(shape(state, "body.0.weight")) == 4):
        return None
    feat, cin = shape(state, "conv_first.weight")[:2]
    return {"num_in_ch": cin, "num_feat": feat,
            "num_layers": count_indices(keys, r"^body\.(\d+)\.weight$") + 2,
            "bias": "conv_first.bias" in keys}


# The common PyTorch port's names (`input`, `residual_layer.N.conv`, `output`).
_PORT_RULES = [(r"^input\.", "conv_first."), (r"^residual_layer\.(\d+)\.conv\.", r"body.\1."),
               (r"^output\.", "conv_last.")]


# Lornatang's VDSR-PyTorch names (`conv1.0`, `trunk.N.conv`, `conv2`).
_LORNATANG_RULES = [(r"^conv1\.0\.", "conv_first."), (r"^trunk\.(\d+)\.conv\.", r"body.\1."),
                    (r"^conv2\.", "conv_last.")]


def rename_foreign(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """`state` in our names when it is in the common VDSR port's names or Lornatang's, else None."""
    if "input.weight" in state and any(k.startswith("residual_layer.") for k in state):
        return rename_keys(state, _PORT_RULES)
    if {"conv1.0.weight", "trunk.0.conv.weight", "conv2.weight"} <= set(state):
        return rename_keys(state, _LORNATANG_RULES)
    return None
