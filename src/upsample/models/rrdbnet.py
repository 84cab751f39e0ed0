"""RRDBNet, the ESRGAN generator (Wang et al. 2018), with BasicSR parameter names.

conv_first -> 23 RRDB blocks (3 residual dense blocks each: 5 convs, growth 32, LeakyReLU 0.2,
residuals scaled by 0.2) -> conv_body, global residual -> nearest x2 + conv_up1 -> nearest x2 +
conv_up2 -> conv_hr -> conv_last. As in Real-ESRGAN, scale 2 and 1 first pixel-unshuffle the input
by 2 and 4 (so H and W must be multiples of 2 or 4), then run the x4 network. Scale 3 uses one
nearest x3 + conv_up1 and has no conv_up2. With `unshuffle_input=False`, scale 2 and 1 take the
original ESRGAN's (and BSRGAN's) layout instead: one nearest x2 + conv_up1, or no upsampling.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import UserError
from .state_keys import ONNX_HINT, count_indices, rename_keys, shape


@torch.no_grad()
def scaled_kaiming_(modules, scale: float = 0.1) -> None:
    """BasicSR's `default_init_weights`: Kaiming normal, multiplied by `scale`, zero bias."""
    for m in modules:
        nn.init.kaiming_normal_(m.weight)
        m.weight.mul_(scale)
        if m.bias is not None:
            m.bias.zero_()


class ResidualDenseBlock(nn.Module):
    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32):
        super().__init__()
        for i in range(1, 6):
            cin = num_feat + (i - 1) * num_grow_ch
            setattr(self, f"conv{i}", nn.Conv2d(cin, num_grow_ch if i < 5 else num_feat, 3, 1, 1))
        self.lrelu = nn.LeakyReLU(0.2, inplace=True)
        scaled_kaiming_([self.conv1, self.conv2, self.conv3, self.conv4, self.conv5], 0.1)

    def forward(self, x):
        feats = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            feats.append(self.lrelu(conv(torch.cat(feats, 1))))
        return self.conv5(torch.cat(feats, 1)) * 0.2 + x


class RRDB(nn.Module):
    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x):
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    def __init__(self, *, scale: int = 4, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64,
                 num_block: int = 23, num_grow_ch: int = 32, unshuffle_input: bool = True):
        super().__init__()
        if scale not in (1, 2, 3, 4):
            raise ValueError(f"RRDBNet supports scales 1, 2, 3 and 4, got {scale}")
        self.scale = scale
        self.unshuffle = {1: 4, 2: 2}.get(scale, 1) if unshuffle_input else 1
        # the nearest-neighbour factor before each conv_upN
        self.steps = {4: (2, 2), 3: (3,)}.get(scale, (2, 2) if unshuffle_input else (2,) * (scale // 2))
        self.conv_first = nn.Conv2d(num_in_ch * self.unshuffle ** 2, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(num_feat, num_grow_ch) for _ in range(num_block)))
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        for n in range(len(self.steps)):
            setattr(self, f"conv_up{n + 1}", nn.Conv2d(num_feat, num_feat, 3, 1, 1))
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x):
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for n, step in enumerate(self.steps):
            conv = getattr(self, f"conv_up{n + 1}")
            feat = self.lrelu(conv(F.interpolate(feat, scale_factor=step, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))


# ------------------------------------------------------------------ recognising state dicts


def detect(state: dict[str, torch.Tensor]) -> dict | None:
    """RRDBNet's constructor keywords when `state` (our/BasicSR names) is one, else None.
    UserError when the names fit but the channel counts match no scale."""
    keys = set(state)
    if not {"conv_first.weight", "body.0.rdb1.conv1.weight", "conv_last.weight"} <= keys:
        return None
    if any(".conv1x1." in k for k in keys):  # ESRGAN+: RDBs with a 1x1 conv and noise inputs
        raise UserError(f"ESRGAN+ (residual dense blocks with 1x1 convs) is not supported; {ONNX_HINT}")
    if "conv_up3.weight" in keys:  # ESRGAN's x8 files: a third nearest x2 + conv
        raise UserError(f"RRDBNet x8 (3 upsampling convs) is not supported; scales 1-4; {ONNX_HINT}")
    feat, cin = shape(state, "conv_first.weight")[:2]
    cout = shape(state, "conv_last.weight")[0]
    # x2 / x1 pixel-unshuffle the input: conv_first sees 4x / 16x the image channels
    factor = cin // cout if cin % cout == 0 else 0
    plain = {}
    if "conv_up2.weight" in keys:
        scale = {1: 4, 4: 2, 16: 1}.get(factor)
    elif factor == 1:  # one nearest x2 + conv (or none) as ESRGAN's and BSRGAN's x2 (x1) files:
        # an x3 of this layout is told apart by the metadata of our files only
        scale, plain = (2 if "conv_up1.weight" in keys else 1), {"unshuffle_input": False}
    else:
        scale = None
    if scale is None:
        raise UserError(f"RRDBNet with {cin} input and {cout} output channels "
                        "matches no scale (1, 2, 3 or 4)")
    return {"scale": scale, "num_in_ch": cin // factor, "num_out_ch": cout,
            "num_feat": feat, "num_block": count_indices(keys, r"^body\.(\d+)\.rdb1\."),
            "num_grow_ch": shape(state, "body.0.rdb1.conv1.weight")[0], **plain}


def at_scale(kwargs: dict, scale: int | None) -> dict:
    """`detect`'s keywords read at `scale` where the tensors cannot tell: one upsampling conv is
    ESRGAN's x2 (nearest x2) or our x3 (nearest x3); else `kwargs` as they are."""
    if scale == 3 and kwargs.get("scale") == 2 and kwargs.get("unshuffle_input") is False:
        return {**{k: v for k, v in kwargs.items() if k != "unshuffle_input"}, "scale": 3}
    return kwargs


# The original ESRGAN repository's `RRDB_trunk` names (RRDBNet_arch.py) -> BasicSR's.
_ESRGAN_TRUNK_RULES = [(r"^RRDB_trunk\.", "body."), (r"\.RDB(\d)\.", r".rdb\1."),
                       (r"^trunk_conv\.", "conv_body."), (r"^upconv(\d)\.", r"conv_up\1."),
                       (r"^HRconv\.", "conv_hr.")]


def rename_foreign(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """`state` in our names when it is in one of original ESRGAN's layouts, else None."""
    keys = set(state)
    if "model.0.weight" in keys and any(k.startswith("model.1.sub.") for k in keys):
        return _from_esrgan_sequential(state)
    if any(k.startswith("RRDB_trunk.") for k in keys):
        return rename_keys(state, _ESRGAN_TRUNK_RULES)
    return None


def _from_esrgan_sequential(state: dict) -> dict:
    """Original ESRGAN (`model.0`, `model.1.sub.N.RDBj.convk.0`, `model.1.sub.<last>` = trunk conv,
    then the upsampling/HR convs as `model.3`, `model.6`, `model.8`, `model.10` for x4)."""
    out = {}
    sub = re.compile(r"^model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$")
    trunk = max((int(m.group(1)) for k in state if (m := sub.match(k))), default=-1) + 1
    tail = sorted({int(m.group(1)) for k in state if (m := re.match(r"^model\.(\d+)\.", k))} - {0, 1})
    tail_names = {}
    if len(tail) >= 2:
        ups = tail[:-2]
        tail_names = {i: f"conv_up{n + 1}" for n, i in enumerate(ups)}
        tail_names[tail[-2]], tail_names[tail[-1]] = "conv_hr", "conv_last"
    for k, v in state.items():
        if m := sub.match(k):
            out[f"body.{m.group(1)}.rdb{m.group(2)}.conv{m.group(3)}.{m.group(4)}"] = v
        elif m := re.match(rf"^model\.1\.sub\.{trunk}\.(weight|bias)$", k):
            out[f"conv_body.{m.group(1)}"] = v
        elif m := re.match(r"^model\.(\d+)\.(weight|bias)$", k):
            i = int(m.group(1))
            out[f"{'conv_first' if i == 0 else tail_names.get(i, f'model.{i}')}.{m.group(2)}"] = v
        else:
            out[k] = v
    return out
