"""VapSR (Zhou et al. 2022, "Efficient Image Super-Resolution using Vast-Receptive-Field Attention").

Structure and parameter names follow the official implementation (github.com/zhoumumu/VapSR,
code/vapsr.py) so its checkpoints load: `conv_first`, `body.N` = VAB blocks (`proj_1`, GELU,
`atten_branch` = pointwise 1x1 -> depth-wise 5x5 -> depth-wise 5x5 dilation 3, multiplied with
its input, `proj_2`, residual, `pixel_norm` = LayerNorm over channels), `conv_body` (grouped for
VapSR-S), a global residual and `upsampler.N`.

Two variants beside the official one:
- `plain_3x3=True` (`vapsr-dense3x3-*`, ours): both depth-wise kernels of the attention (5x5 and
  5x5 dilated) become plain dense 3x3 convolutions, for runtimes that lack fast depth-wise or
  dilated kernels (dense 3x3 convs reach several times the GFLOP/s there).
- catid's (`vapsr-catid-*`, his `upsampling` repository, upsampling_net.py): `proj_kernel=3`
  makes each block's `proj_1` a 3x3 convolution (padding 1) instead of 1x1, and `signed_io=True`
  is his in-network normalisation: he feeds uint8 RGB and computes `x / 127.5 - 1`, and the
  network's output is RGB in [-1, 1]. Here the tensors stay in [0, 1] at the model's edge (the
  tensor contract): the input is mapped by 2x - 1 (= 255x / 127.5 - 1) and the output by
  (y + 1) / 2, so his weights give his pixels (his uint8 output `y * 127.5 + 128`, truncated, is
  the rounding of 255 (y + 1) / 2 that every caller applies). His checkpoints hold VapSR's names;
  `detect` tells them from the official ones by proj_1's kernel.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .state_keys import count_indices, rename_keys, shape


def native_weight_grads(grad, x, weight, padding, dilation):
    """oneDNN's weight and bias gradients of a depth-wise convolution (groups = channels), in
    the dtype of `weight`."""
    groups = x.shape[1]
    _, grad_w, grad_b = torch.ops.aten.convolution_backward(
        grad, x, weight.to(x.dtype), [groups], [1, 1], list(padding), list(dilation), False, [0, 0],
        groups, [False, True, True])
    return grad_w.to(weight.dtype), grad_b.to(weight.dtype)


def tap_weight_grads(grad, x, weight, padding, dilation):
    """The same gradients as `native_weight_grads`, written as one product-sum per kernel tap
    (summed in fp32) for `torch.compile` to turn into a single loop over the two tensors:
    oneDNN's own kernel for them took 30 ms (fp32) and 45 ms (bf16) a layer on batch 32 x 64
    channels x 48 px, channels_last, 2 Zen 5 threads; the generated one 10-11 ms. Eager this
    form is slower still: compile it or use the native one."""
    (kh, kw), (h, w) = weight.shape[-2:], grad.shape[-2:]
    (ph, pw), (dh, dw) = padding, dilation
    grad, padded = grad.float(), F.pad(x, (pw, pw, ph, ph)).float()
    taps = [(grad * padded[:, :, i * dh:i * dh + h, j * dw:j * dw + w]).sum((0, 2, 3))
            for i in range(kh) for j in range(kw)]
    return torch.stack(taps, 1).view(weight.shape).to(weight.dtype), grad.sum((0, 2, 3)).to(weight.dtype)


_weight_grads = native_weight_grads  # what `_DepthwiseSame` uses; see `depthwise_weight_grads`


@contextlib.contextmanager
def depthwise_weight_grads(fn):
    """Within it, `_DepthwiseSame`'s backward computes the weight and bias gradients with `fn`
    (same arguments as `native_weight_grads`): the trainer passes a compiled `tap_weight_grads`
    where timing the first steps found it faster (training/speed.py)."""
    global _weight_grads
    before, _weight_grads = _weight_grads, fn
    try:
        yield
    finally:
        _weight_grads = before


def has_depthwise(model: nn.Module) -> bool:
    """Whether `model` has VapSR's depth-wise attention convolutions (which `_DepthwiseSame` runs)."""
    return any(isinstance(m, Attention) and not m.plain_3x3 for m in model.modules())


class _DepthwiseSame(torch.autograd.Function):
    """A depth-wise, stride-1, 'same'-padded convolution computed in the dtype of `x` (fp32 or
    bf16), whose input gradient is that same convolution of the output gradient with the kernel
    turned by 180 degrees: on a CPU in channels_last, oneDNN's own backward of VapSR's two
    depth-wise convolutions took most of a training step (`upsample bench --train vapsr-x2`,
    batch 32 x 48 px, 2 Zen 5 threads: fp32 7.1 -> 11.7 patches/s in one A/B run). The weight
    and bias gradients are `_weight_grads`', in the parameters' dtype."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.dilation = padding, dilation
        return F.conv2d(x, weight.to(x.dtype), bias.to(x.dtype), padding=padding, dilation=dilation,
                        groups=x.shape[1])

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        pad, dil = ctx.padding, ctx.dilation
        grad = grad.to(x.dtype).contiguous(memory_format=torch.channels_last)
        grad_x = F.conv2d(grad, weight.flip(2, 3).to(x.dtype), padding=pad, dilation=dil, groups=x.shape[1])
        grad_w, grad_b = _weight_grads(grad, x, weight, pad, dil)
        return grad_x, grad_w, grad_b, None, None


def depthwise(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """`conv(x)` for a depth-wise 'same' convolution, through `_DepthwiseSame` where its
    backward is the slow one (channels_last training on the CPU, fp32 or bf16 autocast), else
    as it is."""
    same = (conv.groups == conv.in_channels == conv.out_channels == x.shape[1] and conv.stride == (1, 1)
            and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple)
            and all(2 * p == d * (k - 1) for p, d, k in zip(conv.padding, conv.dilation, conv.kernel_size)))
    hooked = conv._forward_hooks or conv._forward_pre_hooks  # those run only through conv(x)
    amp = torch.is_autocast_enabled("cpu") and x.dtype == torch.float32  # autocast casts fp32 only
    dtype = torch.get_autocast_dtype("cpu") if amp else x.dtype  # what conv(x) would compute in
    if (same and not hooked and conv.bias is not None and torch.is_grad_enabled()
            and x.device.type == "cpu" and dtype in (torch.float32, torch.bfloat16)
            and x.is_contiguous(memory_format=torch.channels_last) and not torch.jit.is_scripting()
            and not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export()):
        with torch.autocast("cpu", enabled=False):
            return _DepthwiseSame.apply(x.to(dtype), conv.weight, conv.bias, conv.padding, conv.dilation)
    return conv(x)


class Attention(nn.Module):
    def __init__(self, dim: int, plain_3x3: bool = False):
        super().__init__()
        self.pointwise = nn.Conv2d(dim, dim, 1)
        self.plain_3x3 = plain_3x3
        if plain_3x3:
            # Dense (groups=1) 3x3 convs: the kernels every runtime makes fast; the parameter
            # names stay the official ones so the two variants share loading code.
            self.depthwise = nn.Conv2d(dim, dim, 3, padding=1)
            self.depthwise_dilated = nn.Conv2d(dim, dim, 3, padding=1)
        else:
            self.depthwise = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
            self.depthwise_dilated = nn.Conv2d(dim, dim, 5, padding=6, groups=dim, dilation=3)

    def forward(self, x):
        if self.plain_3x3:
            return x * self.depthwise_dilated(self.depthwise(self.pointwise(x)))
        return x * depthwise(self.depthwise_dilated, depthwise(self.depthwise, self.pointwise(x)))


class VAB(nn.Module):
    """Vast-receptive-field attention block."""

    def __init__(self, d_model: int, d_atten: int, plain_3x3: bool = False, proj_kernel: int = 1):
        super().__init__()
        self.proj_1 = nn.Conv2d(d_model, d_atten, proj_kernel, padding=proj_kernel // 2)
        self.activation = nn.GELU()
        self.atten_branch = Attention(d_atten, plain_3x3)
        self.proj_2 = nn.Conv2d(d_atten, d_model, 1)
        self.pixel_norm = nn.LayerNorm(d_model)

    def forward(self, x):
        y = self.proj_2(self.atten_branch(self.activation(self.proj_1(x)))) + x
        if torch.onnx.is_in_onnx_export():
            return self._norm_channels(y)
        out = self.pixel_norm(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        # a channels_last `y` comes back channels_last as it is; forcing NCHW here cost two layout
        # copies a block in channels_last training (vapsr-x2 fp32: +5 % patches/s without them)
        return out if y.is_contiguous(memory_format=torch.channels_last) else out.contiguous()

    def _norm_channels(self, y):
        """`pixel_norm` written along dim 1: the same LayerNorm without the two transposes,
        which cost OpenVINO a third of VapSR's time in layout reorders (x2 at 640x360, fp32,
        2 threads: 3.0 -> 2.0 s). Exported graphs only; eager keeps torch's fused kernel."""
        n = self.pixel_norm
        d = y - y.mean(1, keepdim=True)
        inv = 1 / torch.sqrt(d.pow(2).mean(1, keepdim=True) + n.eps)
        return d * inv * n.weight.view(1, -1, 1, 1) + n.bias.view(1, -1, 1, 1)


def upsampler(num_feat: int, num_out_ch: int, scale: int) -> nn.Sequential:
    """The official heads: x4 = conv(->64), shuffle 2, LeakyReLU, conv(16->4C), shuffle 2 (the
    same PixelShuffle module twice, as upstream); x2/x3 = conv(->56), LeakyReLU, conv(->s^2 C),
    shuffle s."""
    if scale == 4:
        shuffle = nn.PixelShuffle(2)
        return nn.Sequential(nn.Conv2d(num_feat, 64, 3, 1, 1), shuffle, nn.LeakyReLU(0.1, inplace=True),
                             nn.Conv2d(16, num_out_ch * 4, 3, 1, 1), shuffle)
    return nn.Sequential(nn.Conv2d(num_feat, 56, 3, 1, 1), nn.LeakyReLU(0.1, inplace=True),
                         nn.Conv2d(56, num_out_ch * scale * scale, 3, 1, 1), nn.PixelShuffle(scale))


class VapSR(nn.Module):
    def __init__(self, *, scale: int = 4, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 48,
                 num_block: int = 21, d_atten: int = 64, conv_groups: int = 1, plain_3x3: bool = False,
                 proj_kernel: int = 1, signed_io: bool = False):
        super().__init__()
        if scale not in (2, 3, 4):
            raise ValueError(f"VapSR supports scales 2, 3 and 4, got {scale}")
        if proj_kernel not in (1, 3):
            raise ValueError(f"proj_kernel must be 1 (VapSR) or 3 (catid's variant), got {proj_kernel}")
        self.scale, self.signed_io = scale, signed_io
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(VAB(num_feat, d_atten, plain_3x3, proj_kernel) for _ in range(num_block)))
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1, groups=conv_groups)
        self.upsampler = upsampler(num_feat, num_out_ch, scale)

    def forward(self, x):
        if self.signed_io:  # catid's network sees [-1, 1]; the contract's edge is [0, 1]
            x = x * 2 - 1
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        out = self.upsampler(feat)
        return (out + 1) / 2 if self.signed_io else out


# ------------------------------------------------------------------ recognising state dicts


def detect(state: dict[str, torch.Tensor]) -> dict | None:
    """VapSR's constructor keywords when `state` is one, else None. UserError when the names
    fit but the upsampler is missing or matches no scale. A 3x3 `proj_1` is catid's variant,
    which always comes with his [-1, 1] normalisation inside the network."""
    keys = set(state)
    if not {"conv_first.weight", "body.0.proj_1.weight", "body.0.atten_branch.depthwise.weight"} <= keys:
        return None
    feat, cin = shape(state, "conv_first.weight")[:2]
    kwargs = {"num_in_ch": cin, "num_feat": feat, "num_block": count_indices(keys, r"^body\.(\d+)\.proj_1\."),
              "d_atten": shape(state, "body.0.proj_1.weight")[0],
              "conv_groups": feat // shape(state, "conv_body.weight")[1],
              "plain_3x3": shape(state, "body.0.atten_branch.depthwise.weight")[-1] == 3}
    proj_kernel = shape(state, "body.0.proj_1.weight")[-1]
    if proj_kernel != 1:
        kwargs.update(proj_kernel=proj_kernel, signed_io=True)
    if "upsampler.3.weight" in keys:  # x4: conv, shuffle, lrelu, conv(16 -> 4C), shuffle
        kwargs.update(scale=4, num_out_ch=shape(state, "upsampler.3.weight")[0] // 4)
    elif "upsampler.2.weight" in keys:  # x2/x3: conv, lrelu, conv(56 -> s^2 C), shuffle
        n = shape(state, "upsampler.2.weight")[0]
        scale = next((s for s in (2, 3) if n % (s * s) == 0 and n // (s * s) in (1, 3)), None)
        if scale is None:
            raise UserError(f"VapSR upsampler with {n} output channels matches no scale")
        kwargs.update(scale=scale, num_out_ch=n // (scale * scale))
    else:
        raise UserError("VapSR without a known upsampler (upsampler.2 or upsampler.3)")
    return kwargs


# The VapSR beta release (vapsr_beta.py) named the attention `spatial_gating_unit` and the norm `norm`.
_BETA_RULES = [(r"\.spatial_gating_unit\.conv0\.", ".atten_branch.depthwise."),
               (r"\.spatial_gating_unit\.conv_spatial\.", ".atten_branch.depthwise_dilated."),
               (r"\.spatial_gating_unit\.conv1\.", ".atten_branch.pointwise."),
               (r"^(body\.\d+)\.norm\.", r"\1.pixel_norm.")]


def rename_foreign(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """`state` in our names when it uses the VapSR beta names, else None."""
    if any(".spatial_gating_unit." in k for k in state):
        return rename_keys(state, _BETA_RULES)
    return None
