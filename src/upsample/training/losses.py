"""Pixel losses for training: L1, MSE and Charbonnier (a smooth L1), mean over all elements."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError


class CharbonnierLoss(nn.Module):
    """mean(sqrt((x - y)^2 + eps^2)) (Lai et al. 2017); eps sets where it turns quadratic."""

    def __init__(self, eps: float = 1e-3):
        super().__init__()
        self.eps = float(eps)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.sqrt((pred - target) ** 2 + self.eps * self.eps).mean()


def make_loss(name: str, eps: float = 1e-3) -> nn.Module:
    if name == "l1":
        return nn.L1Loss()
    if name == "mse":
        return nn.MSELoss()
    if name == "charbonnier":
        return CharbonnierLoss(eps)
    raise UserError(f"unknown loss {name!r}: use l1, mse or charbonnier")


class PerceptualLoss(nn.Module):
    """L1 between the features of pred and target in a frozen ImageNet network (Johnson et al.
    2016; ESRGAN: VGG19 conv5_4 before its ReLU). See `features` for the networks and layers."""

    def __init__(self, network: str, layer: str = "", weights: str = ""):
        super().__init__()
        from ..models.features import feature_extractor
        self.features = feature_extractor(network, layer, weights)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            ref = self.features(target)
        return nn.functional.l1_loss(self.features(pred).float(), ref.float())


def relativistic_loss(logits: torch.Tensor, ref: torch.Tensor, real: bool) -> torch.Tensor:
    """Relativistic average GAN term (Jolicoeur-Martineau 2018, ESRGAN): BCE of "`logits` are more
    real than the mean of `ref`" against target `real`. The generator's loss is the mean of
    (D(real) vs D(fake), False) and (D(fake) vs D(real), True); the discriminator's the sum of
    halves of (D(real) vs D(fake), True) and (D(fake) vs D(real), False)."""
    x = logits.float() - ref.float().mean()
    return nn.functional.binary_cross_entropy_with_logits(x, torch.full_like(x, float(real)))
