"""Optimizers, schedulers and the clipped optimizer step: shared by the generator (loop.py) and
the GAN discriminator (gan.py), so they live apart from both."""

from __future__ import annotations

import torch
from torch import nn

from . import config as config_mod


def build_optimizer(cfg: config_mod.OptimConfig, params) -> torch.optim.Optimizer:
    """Adam/AdamW fused (one kernel for all parameters, on CPU and CUDA), SGD multi-tensor
    (foreach): the update is a few kernels, not one per parameter tensor."""
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay, foreach=True)
    cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, fused=True)


def build_scheduler(cfg: config_mod.SchedConfig, opt, steps: int):
    """Stepped once per training step, except plateau: once per validation, on val PSNR."""
    if cfg.name == "step":
        return torch.optim.lr_scheduler.StepLR(opt, cfg.step_size, cfg.gamma)
    if cfg.name == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(opt, cfg.milestones, cfg.gamma)
    if cfg.name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, cfg.eta_min)
    if cfg.name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, "max", cfg.factor, cfg.patience)
    return None


def optimizer_step(opt, scaler, model: nn.Module, cfg: config_mod.OptimConfig) -> float:
    """Clip (when configured) and apply the gradients now in `model`; returns the lr used."""
    if cfg.clip:
        scaler.unscale_(opt)
        limit = cfg.clip / opt.param_groups[0]["lr"] if cfg.clip_adjustable else cfg.clip
        if cfg.clip_type == "norm":
            nn.utils.clip_grad_norm_(model.parameters(), limit)
        else:
            nn.utils.clip_grad_value_(model.parameters(), limit)
    lr = opt.param_groups[0]["lr"]
    scaler.step(opt)
    scaler.update()
    return lr
