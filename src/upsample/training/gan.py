"""Adversarial training (ESRGAN stage 2): the [gan] discriminator and the one-step update of
generator and discriminator; the loop calls `gan_step` in place of its plain step."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UserError
from ..models import registry
from . import config as config_mod
from .losses import relativistic_loss
from .optim import build_optimizer, build_scheduler, optimizer_step


@dataclass
class Discriminator:
    """The discriminator with its own optimizer, scheduler and GradScaler (all saved in
    last_state.pt's `gan`). `net` is `model`, or its DDP wrapper under torchrun."""
    model: nn.Module
    opt: torch.optim.Optimizer
    sched: object | None
    scaler: torch.amp.GradScaler
    cfg: config_mod.GanConfig
    net: nn.Module | None = None

    def __post_init__(self):
        if self.net is None:
            self.net = self.model


def build_discriminator(cfg: config_mod.Config, patch: int, dev) -> Discriminator:
    """The [gan] discriminator, checked against the patch size, on `dev` (see gan_step)."""
    model = registry.create_model(cfg.gan.discriminator, **cfg.gan.kwargs)
    if model.upsample_spec.kind != "discriminator":
        raise UserError(f"gan.discriminator: {cfg.gan.discriminator} is not a discriminator; see "
                        "`upsample models --all`")
    check_patch(model, cfg.gan.discriminator, patch, _lr_step(cfg))
    model.to(dev).train()
    opt = build_optimizer(cfg.gan.optim, model.parameters())
    return Discriminator(model=model, opt=opt, cfg=cfg.gan,
                         sched=build_scheduler(cfg.gan.sched, opt, cfg.train.steps),
                         scaler=torch.amp.GradScaler(dev.type, enabled=cfg.train.amp == "fp16"))


def _lr_step(cfg: config_mod.Config) -> int:
    """What the HR patch side must be a multiple of for whole LR pixels at every training scale."""
    spec = registry.get_spec(cfg.model.name)
    if spec.pre_upsample:
        return 1
    return math.lcm(*(int(s) for s in ([spec.scale] if spec.scale else cfg.model.scales or [1])))


def check_patch(model: nn.Module, name: str, patch: int, lr_step: int = 1) -> None:
    """One line when the discriminator cannot take HR patches of side `patch` (the VGG-style one
    takes one size; the U-Net's skips need a multiple of 8), not a shape error at the first step.
    `lr_step`: the generator's need (patch % scale == 0), so that the two advices agree."""
    size = getattr(model, "input_size", None)
    if size and size % lr_step:  # e.g. x3: 128 and 256 split into no whole LR patch
        raise UserError(f"gan.discriminator: {name} takes {size}x{size} patches, and {size} is not a multiple "
                        f"of the model's scale ({lr_step}): no whole LR patch; use gan.discriminator = "
                        "\"realesrgan-unet-discriminator\" with data.patch_size a multiple of "
                        f"{math.lcm(8, lr_step)}")
    if size and size != patch:
        raise UserError(f"gan.discriminator: {name} takes {size}x{size} patches; set data.patch_size = {size}")
    need = getattr(model, "size_multiple", 1)
    if patch % need:
        step = math.lcm(need, lr_step)  # suggest sizes that suit the generator too
        fit = max(step, patch // step * step)
        raise UserError(f"gan.discriminator: {name} takes patches whose side is a multiple of {need}, got "
                        f"data.patch_size = {patch}; set it to e.g. {fit} or {fit + step}")


def gan_step(net, inp, target, *, content, adv_weight: float, g_update, disc: Discriminator,
             amp) -> tuple:
    """One ESRGAN step, as BasicSR's ESRGANModel. Generator: `content(pred)` (weighted pixel +
    perceptual loss) + adv_weight x the relativistic average loss, with the discriminator frozen;
    `g_update(loss)` applies it and returns the lr. Then the discriminator `disc` on the real
    patches and the detached output, forward/backward twice (DDP allows no second forward before
    a backward): half the relativistic loss each. Returns (generator loss, {term: 0-d tensor},
    generator lr)."""
    with amp():
        pred = net(inp)
    loss, parts = content(pred)
    disc.model.requires_grad_(False)
    with amp():
        real, fake = disc.model(target).detach(), disc.model(pred)
    g_adv = (relativistic_loss(real, fake, False) + relativistic_loss(fake, real, True)) / 2
    loss = loss + adv_weight * g_adv
    parts["g_adv"] = g_adv.detach()  # logged: it need not keep the graph
    lr = g_update(loss)
    disc.model.requires_grad_(True)

    pred, opt, scaler = pred.detach(), disc.opt, disc.scaler
    opt.zero_grad(set_to_none=True)
    with amp():
        with torch.no_grad():
            fake_ref = disc.net(pred)
        real = disc.net(target)
    l_real = 0.5 * relativistic_loss(real, fake_ref, True)
    scaler.scale(l_real).backward()
    with amp():
        fake = disc.net(pred)
    l_fake = 0.5 * relativistic_loss(fake, real.detach(), False)
    scaler.scale(l_fake).backward()
    optimizer_step(opt, scaler, disc.model, disc.cfg.optim)
    parts.update(d_loss=(l_real + l_fake).detach(), d_real=real.detach().float().mean(),
                 d_fake=fake.detach().float().mean())
    return loss, parts, lr
