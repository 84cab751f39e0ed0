"""The PyTorch runtime: the module itself, eager, on its device (the reference every other
runtime is compared with)."""

from __future__ import annotations

import torch
from torch import nn

from .runner import Runner
from .kinds import Backend


def torch_runner(model: nn.Module, device: torch.device) -> Runner:
    model = model.to(device)
    return Runner(run=model, spec=model.upsample_spec, runtime=Backend.TORCH, model=model)
