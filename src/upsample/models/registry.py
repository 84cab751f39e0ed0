"""The model zoo: registered variants as data, `create_model`, introspection (`upsample models`).

A variant is a name bound to an architecture and its constructor keywords. Every model built here
carries `model.upsample_spec` (a `ModelSpec`), which says how to feed it: its scale (None for
VDSR, which refines a bicubic-upscaled image at any scale), whether it takes "y" or "rgb", whether
it expects the bicubic-upscaled image (`pre_upsample`), and whether it is a generator.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from . import WEIGHTS_DIR, discriminator, downscaler, espcn, rrdbnet, vapsr, vdsr
from .colorspace import attach as attach_colorspace
from .state_keys import ONNX_HINT
from .discriminator import UNetDiscriminatorSN, VGGStyleDiscriminator
from .downscaler import JointSR
from .espcn import ESPCN
from .rrdbnet import RRDBNet
from .vapsr import VapSR
from .vdsr import VDSR

ARCHS: dict[str, type[nn.Module]] = {
    "espcn": ESPCN,
    "vdsr": VDSR,
    "vapsr": VapSR,
    "rrdbnet": RRDBNet,
    "joint": JointSR,  # learned downscaler + ESPCN upscaler, trained through a codec proxy
    "vgg_discriminator": VGGStyleDiscriminator,
    "unet_discriminator_sn": UNetDiscriminatorSN,
}
DISCRIMINATORS = {"vgg_discriminator", "unet_discriminator_sn"}

StateDict = dict[str, torch.Tensor]

# How checkpoint.detect_arch recognises a bare state dict: each architecture's `detect` returns its
# constructor keywords or None; the first that answers wins, so this order is the precedence.
DETECTORS: list[tuple[str, Callable[[StateDict], dict | None]]] = [
    ("rrdbnet", rrdbnet.detect),
    ("vapsr", vapsr.detect),
    ("joint", downscaler.detect),
    ("espcn", espcn.detect),
    ("vdsr", vdsr.detect),
    ("vgg_discriminator", discriminator.detect_vgg_style),
    ("unet_discriminator_sn", discriminator.detect_unet_sn),
]
# Other projects' parameter names for our architectures: each returns the state dict in our names,
# or None when it is not in its layouts; the first that answers wins (checkpoint.normalize_keys).
FOREIGN_RENAMERS: list[Callable[[StateDict], StateDict | None]] = [
    rrdbnet.rename_foreign,  # original ESRGAN: `model.N` sequential, `RRDB_trunk`
    vapsr.rename_foreign,    # VapSR beta
    vdsr.rename_foreign,     # the common VDSR port, Lornatang's
    espcn.rename_foreign,    # Lornatang's
]
# Other projects' networks recognised by their tensors but not run here: each returns the one-line
# reason (what the file is, what is supported instead), or None (checkpoint.detect_arch).
_SUPPORTED = "ESRGAN/Real-ESRGAN RRDBNet x1-x4, VapSR, ESPCN, VDSR"


def _srvgg_compact(state: StateDict) -> str | None:
    """Real-ESRGAN's SRVGGNetCompact (realesr-general-x4v3, realesr-animevideov3): only `body.N`
    tensors, 3x3 convs with PReLUs (1-d weights) or parameterless activations between them."""
    if not state or not all(re.fullmatch(r"body\.\d+\.(weight|bias)", k) for k in state):
        return None
    weights = [v for k, v in state.items() if k.endswith(".weight")]
    convs = [w for w in weights if w.dim() == 4 and tuple(w.shape[2:]) == (3, 3)]
    if len(convs) < 2 or len(convs) + sum(w.dim() == 1 for w in weights) != len(weights) \
            or state.get("body.0.weight", torch.empty(0)).dim() != 4:
        return None
    return (f"Real-ESRGAN SRVGGNetCompact (realesr-*-v3) is not supported here; supported: {_SUPPORTED}; "
            f"{ONNX_HINT}")


# Other projects' networks (spandrel runs them) told by a tensor each has, first match wins.
_OTHER_NETWORKS = [("HAT", ("layers.0.residual_group.blocks.0.conv_block.cab.0.weight",)),
                   ("Swin2SR", ("layers.0.residual_group.blocks.0.norm1.weight", "patch_embed.proj.weight")),
                   ("SwinIR", ("layers.0.residual_group.blocks.0.norm1.weight",)),
                   ("SPAN", ("block_1.c1_r.sk.weight",)),
                   ("Real-CUGAN", ("unet1.conv1.conv.0.weight",)),
                   ("OmniSR", ("residual_layer.0.residual_layer.0.layer.0.fn.0.weight",))]


def _other_network(state: StateDict) -> str | None:
    """The name of another project's network `state` is, by its tensor names, with the refusal."""
    name = next((n for n, keys in _OTHER_NETWORKS if all(k in state for k in keys)), None)
    return None if name is None else f"{name} is not supported here; supported: {_SUPPORTED}; {ONNX_HINT}"


UNSUPPORTED: list[Callable[[StateDict], str | None]] = [_srvgg_compact, _other_network]

PRE_UPSAMPLE = {"vdsr"}  # archs whose forward takes the bicubic-upscaled image

MACS_INPUT = 256  # side of the input image the `macs` column is counted for


@dataclass(frozen=True)
class ModelSpec:
    name: str | None  # registry name; None for a checkpoint that matches no variant
    arch: str
    kwargs: dict = field(default_factory=dict)
    scale: int | None = None  # None: any scale (pre-upsampling models)
    input: str = "rgb"  # "y" or "rgb"
    pre_upsample: bool = False
    kind: str = "generator"  # or "discriminator"
    colorspace: str = "rgb"  # what the layers compute in (models/colorspace.py); I/O stays RGB
    fixed_size: tuple | None = None  # (H, W) of the one input size a foreign graph takes (None: any)
    input_multiple: int = 1  # an exported graph's: H and W must be multiples of it (its metadata)

    @property
    def pad_multiple(self) -> int:
        """H and W of the input must be multiples of this (RRDBNet x1/x2 pixel-unshuffle)."""
        if self.arch == "rrdbnet" and self.kwargs.get("unshuffle_input", True):
            return {1: 4, 2: 2}.get(self.scale, 1)
        return self.input_multiple

    @property
    def channels(self) -> int:
        return 1 if self.input == "y" else 3


def spec_for(arch: str, kwargs: dict, name: str | None = None) -> ModelSpec:
    """The spec of architecture `arch` built with `kwargs` (defaults filled from the constructor)."""
    if arch not in ARCHS:
        raise UserError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
    check_kwargs(arch, kwargs, context=f"cannot build {arch} with {json.dumps(kwargs, default=str)}: ")
    full = full_kwargs(arch, kwargs)
    kind = "discriminator" if arch in DISCRIMINATORS else "generator"
    scale = None if arch in PRE_UPSAMPLE or kind == "discriminator" else int(full["scale"])
    return ModelSpec(name=name, arch=arch, kwargs=dict(kwargs), scale=scale,
                     input="y" if full.get("num_in_ch", 3) == 1 else "rgb",
                     pre_upsample=arch in PRE_UPSAMPLE, kind=kind)


def check_kwargs(arch: str, kwargs: dict, *, label: str = "kwargs", context: str = "") -> None:
    """A UserError (`context`, then `label`.key) naming the first of `kwargs` that `arch`'s
    constructor does not take, or whose type is not its default's: other tools' metadata or a
    recipe's {scale = "3"} failed inside torch ("can't multiply sequence by non-int") or in a
    traceback (a list, a null)."""
    if not isinstance(kwargs, dict):
        raise UserError(f"{context}{label} must be a table of keywords, got {type(kwargs).__name__} {kwargs!r}")
    defaults = full_kwargs(arch, {})
    for key, value in kwargs.items():
        if key not in defaults:
            near = difflib.get_close_matches(str(key), list(defaults), n=1, cutoff=0.6)
            hint = f"; did you mean {label}.{near[0]}?" if near else ""
            raise UserError(f"{context}{label}.{key} is not a keyword of {arch}{hint} "
                            f"(known: {', '.join(defaults)})")
        want = type(defaults[key])
        fits = isinstance(value, want) and (want is bool or not isinstance(value, bool)) or (
            want is float and isinstance(value, int) and not isinstance(value, bool)) or (
            want is bool and value in (0, 1) and isinstance(value, int))  # a switch written 0 / 1
        if defaults[key] is not None and not fits:
            raise UserError(f"{context}{label}.{key} must be {want.__name__}, got "
                            f"{type(value).__name__} {value!r}")


def _defaults(cls) -> dict:
    import inspect
    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
            if p.kind is p.KEYWORD_ONLY and p.default is not p.empty}


def full_kwargs(arch: str, kwargs: dict) -> dict:
    """`kwargs` with the constructor defaults filled in: equal dicts mean equal architectures."""
    return {**_defaults(ARCHS[arch]), **kwargs}


# The registered variants: name -> (arch, constructor keywords). Official hyper-parameters.
_VAPSR = {"num_feat": 48, "num_block": 20, "d_atten": 64, "conv_groups": 1}
_VAPSR_X4 = {**_VAPSR, "num_block": 21}
_VAPSR_S = {"num_feat": 32, "num_block": 11, "d_atten": 64, "conv_groups": 2}
# catid's released x2 model (his `upsampling` repository, create_vapsr2x): 64 features, 20 blocks,
# attention width 48, proj_1 3x3, [-1, 1] inside the network (see models/vapsr.py).
_VAPSR_CATID = {"num_feat": 64, "num_block": 20, "d_atten": 48, "conv_groups": 1, "proj_kernel": 3,
                "signed_io": True}
_VARIANTS: dict[str, tuple[str, dict]] = {
    **{f"espcn-x{s}": ("espcn", {"scale": s, "num_in_ch": 1}) for s in (2, 3, 4)},
    **{f"espcn-rgb-x{s}": ("espcn", {"scale": s, "num_in_ch": 3}) for s in (2, 3, 4)},
    "vdsr": ("vdsr", {"num_in_ch": 1, "num_feat": 64, "num_layers": 20}),
    **{f"vapsr-x{s}": ("vapsr", {"scale": s, **(_VAPSR_X4 if s == 4 else _VAPSR)}) for s in (2, 3, 4)},
    **{f"vapsr-s-x{s}": ("vapsr", {"scale": s, **_VAPSR_S}) for s in (2, 3, 4)},
    # ours: dense 3x3 convs in the attention instead of the depth-wise 5x5 ones (not catid's variant)
    **{f"vapsr-dense3x3-x{s}": ("vapsr", {"scale": s, **(_VAPSR_X4 if s == 4 else _VAPSR), "plain_3x3": True})
       for s in (2, 3, 4)},
    **{f"vapsr-catid-x{s}": ("vapsr", {"scale": s, **_VAPSR_CATID}) for s in (2, 3)},
    **{f"rrdbnet-x{s}": ("rrdbnet", {"scale": s, "num_feat": 64, "num_block": 23, "num_grow_ch": 32})
       for s in (1, 2, 3, 4)},
    "joint-x2": ("joint", {"scale": 2, "num_in_ch": 1}),  # forward = its upscaler; see models/downscaler.py
    "esrgan-discriminator": ("vgg_discriminator", {"num_in_ch": 3, "num_feat": 64, "input_size": 128}),
    "realesrgan-unet-discriminator": ("unet_discriminator_sn", {"num_in_ch": 3, "num_feat": 64}),
}
_REGISTRY: dict[str, ModelSpec] = {n: spec_for(a, kw, n) for n, (a, kw) in _VARIANTS.items()}
# Old names that still resolve: `vapsr-3x3-*` was the dense-attention variant's first name, which
# read as catid's "3x3 variant" (his is vapsr-catid-*). An alias builds and reports its target.
ALIASES: dict[str, str] = {f"vapsr-3x3-x{s}": f"vapsr-dense3x3-x{s}" for s in (2, 3, 4)}


def list_models(kind: str | None = "generator", *, aliases: bool = False) -> list[str]:
    """Registered names of that kind ("generator", "discriminator"; None for all), in zoo order;
    with `aliases` the old names (ALIASES) after them."""
    names = [n for n, s in _REGISTRY.items() if kind is None or s.kind == kind]
    return names + [a for a, n in ALIASES.items() if n in names] if aliases else names


def is_registered(name: str) -> bool:
    """A registered name or an alias of one."""
    return name in _REGISTRY or name in ALIASES


def get_spec(name: str) -> ModelSpec:
    name = ALIASES.get(name, name)
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(name, list(_REGISTRY), n=4, cutoff=0.5)
    close.sort(key=lambda n: weights_path(n) is None)  # shipped (trained) ones first, else by likeness
    hint = f"did you mean {', '.join(close)}?" if close else "see `upsample models` for the list"
    raise UserError(f"unknown model {name!r}; {hint}")


def build(arch: str, kwargs: dict, name: str | None = None, *, colorspace: str = "rgb") -> nn.Module:
    """An architecture instance with `upsample_spec` set (the checkpoint loader's entry point),
    converting to and from `colorspace` inside."""
    spec = spec_for(arch, kwargs, name)
    ints = {k for k, v in _defaults(ARCHS[arch]).items() if type(v) is int}  # not the float weights
    counts = [k for k, v in kwargs.items() if k in ints and isinstance(v, int) and v < 1]
    if counts:  # widths, depths, scales: a 0 built, then failed at the first step with a traceback
        raise UserError(f"cannot build {arch} with {json.dumps(kwargs)}: {counts[0]} must be >= 1")
    try:
        model = ARCHS[arch](**kwargs)
    except (TypeError, ValueError) as exc:
        raise UserError(f"cannot build {arch} with {json.dumps(kwargs)}: {exc}") from None
    model.upsample_spec = spec
    return attach_colorspace(model, colorspace)


def create_model(name: str, *, colorspace: str = "rgb", **overrides) -> nn.Module:
    """A fresh (randomly initialised) registered model; `overrides` change constructor keywords."""
    spec = get_spec(name)
    return build(spec.arch, {**spec.kwargs, **overrides}, spec.name, colorspace=colorspace)


def match_variant(arch: str, kwargs: dict) -> str | None:
    """The registered name whose architecture and (default-filled) keywords equal these."""
    full = full_kwargs(arch, kwargs)
    for name, spec in _REGISTRY.items():
        if spec.arch == arch and full_kwargs(arch, spec.kwargs) == full:
            return name
    return None


def weights_path(name: str) -> Path | None:
    """The shipped weights of a registered model (or of an alias's target), if the package has them."""
    p = WEIGHTS_DIR / f"{ALIASES.get(name, name)}.safetensors"
    return p if p.is_file() else None


def shipped_recipe(name: str) -> Path | None:
    """The resolved config that trained a registered model's shipped weights (packaged beside
    them), if the package has it."""
    weights = weights_path(name) if is_registered(name) else None
    recipe = weights.with_suffix(".toml") if weights else None
    return recipe if recipe and recipe.is_file() else None


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, size: int = MACS_INPUT) -> int:
    """Multiply-accumulates of one forward pass on a 1 x C x size x size input (FlopCounterMode
    flops / 2: convolutions and matrix products; element-wise work is not counted). The model
    should be on the meta device, so counting allocates and computes nothing."""
    from torch.utils.flop_counter import FlopCounterMode
    spec = model.upsample_spec
    device = next(model.parameters()).device
    x = torch.zeros(1, spec.channels, size, size, device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2


def describe(name: str) -> dict:
    """One row of `upsample models`."""
    with torch.device("meta"):
        model = create_model(name)
    spec = model.upsample_spec
    weights = weights_path(name)
    size = spec.kwargs.get("input_size", MACS_INPUT) if spec.kind == "discriminator" else MACS_INPUT
    row = {"name": name, "scale": spec.scale, "params": count_params(model),
           "macs": count_macs(model, size), "input": spec.input,
           "weights": str(weights) if weights else None}
    return {**row, "alias_of": ALIASES[name]} if name in ALIASES else row
