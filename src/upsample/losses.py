"""Pixel losses for training: L1, MSE and Charbonnier (a smooth L1), mean over all elements."""

from __future__ import annotations

import torch
from torch import nn

from .errors import UserError


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
