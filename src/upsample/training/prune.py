"""`upsample prune`: structured filter pruning with torch-pruning.

Whole filters (output channels) are removed from every prunable layer by the same ratio, ranked
by their L1 (or L2) norm as in the VDSR reference pipeline. `--sparsity` is the fraction of the
parameters removed (as "sparsity" means for weights): since a conv's weights scale with its input
times its output width, removing a fraction r of every layer's filters removes about 1 - (1 - r)^2
of the parameters, so sparsity 0.5 keeps ~71 % of the filters and halves params and MACs;
`--filter-ratio` sets r directly instead (parameters count where the model's forward runs: a
joint model's training-only downscaler is neither pruned nor counted); torch-pruning's dependency graph
resizes every layer that reads them (the next conv, residual partners, norms), and each conv
that read a removed channel takes its mean (on smooth synthetic pictures) into its bias, so the
pruned net keeps the level the channel carried (`compensate`). The layers that
fix the model's interface (input and output convs, the pixel-shuffle head) keep their channels.
Because every layer of a family shrinks by one ratio, the result is the same architecture with
smaller widths: it saves as a normal checkpoint whose shape the loader recognises, so it loads,
exports and runs everywhere a trained model does. Fine-tune it with `upsample train --init OUT`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..models import checkpoint, registry
from ..errors import UserError
from ..inference.load import is_untrained, resolve_model
from ..media.imageio import atomic_output, check_new_file
from ..media.progress import track

METHODS = ("l1", "l2", "group-l1", "random")
# architectures whose filters torch-pruning cannot take by one ratio, and why
CANNOT_SHRINK = {"rrdbnet": "RRDBNet's dense blocks feed every layer the concatenation of all earlier "
                            "ones, which torch-pruning cannot shrink by one ratio"}


def output_layers(model: nn.Module) -> list[nn.Module]:
    """Convs whose output channels are part of the interface: the last conv of the network, any
    conv that feeds a PixelShuffle (its channels are scale^2 x the image channels), and the convs
    of an `upsampler` head, whose widths are fixed by the architecture rather than keywords."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    keep = [convs[-1]] if convs else []
    keep += [m for n, m in model.named_modules()
             if isinstance(m, nn.Conv2d) and n.startswith("upsampler") and m not in keep]
    mods = list(model.modules())
    for i, m in enumerate(mods):
        if isinstance(m, nn.PixelShuffle):
            before = [c for c in mods[:i] if isinstance(c, nn.Conv2d)]
            if before and before[-1] not in keep:
                keep.append(before[-1])
    return keep


def prune_model(model: nn.Module, sparsity: float | None = 0.5, method: str = "l1", *,
                filter_ratio: float | None = None, size: int = 32, seed: int = 0) -> nn.Module:
    """Prune in place and return the model: `filter_ratio` of the filters of every prunable conv,
    or, when it is None, the filter ratio that removes the fraction `sparsity` of the parameters
    (the closest the integer widths allow)."""
    for flag, value in (("--sparsity", sparsity), ("--filter-ratio", filter_ratio)):
        if value is not None and not 0.0 < value < 1.0:
            raise UserError(f"{flag} must be between 0 and 1 (exclusive), got {value}")
    most = max_filter_ratio(model)
    if filter_ratio is None:
        filter_ratio = ratio_for_sparsity(model, sparsity, method, size=size, seed=seed, most=most)
    elif filter_ratio > most:
        raise UserError(f"--filter-ratio {filter_ratio:g} would remove every filter of a layer of this "
                        f"model; the most it allows is {most:g}")
    return _prune_filters(model, filter_ratio, method, size=size, seed=seed)


def max_filter_ratio(model: nn.Module) -> float:
    """The largest filter ratio (to 3 decimals) that leaves every prunable layer a filter:
    torch-pruning keeps int(C x (1 - r)) of a layer's C filters and, where that is 0, leaves the
    layer whole (the widths then no longer share one ratio; at 0.99 nothing was pruned at all)."""
    fixed = output_layers(model)
    ran = ran_layers(model, torch.rand(1, model.upsample_spec.channels, 16, 16))  # what it can prune
    # a grouped (not depth-wise) conv loses filters from each group: its width is a group's
    widths = [m.out_channels // (m.groups if m.groups != m.in_channels else 1) for m in model.modules()
              if isinstance(m, nn.Conv2d) and m in ran and m not in fixed]
    if not widths:
        return 0.0
    most = math.floor((1.0 - 1.0 / min(widths)) * 1000) / 1000
    while most > 0 and any(int(c * (1 - most)) < 1 for c in widths):  # float rounding at the edge
        most = round(most - 0.001, 3)
    return most


def ratio_for_sparsity(model: nn.Module, sparsity: float, method: str, *, size: int, seed: int,
                       most: float = 1.0) -> float:
    """Bisect the per-layer filter ratio (at most `most`) whose pruned copy keeps the parameter
    count nearest to (1 - sparsity) x the original (parameters fall monotonically as the ratio
    grows, up to `max_filter_ratio`)."""
    example = torch.rand(1, model.upsample_spec.channels, size, size)
    total = forward_params(model, example)
    target = (1.0 - sparsity) * total
    lo, hi, best = 0.0, most, (float("inf"), min(most, 1.0 - (1.0 - sparsity) ** 0.5))
    # each try prunes a copy (seconds for vdsr or vapsr on a CPU): a progress line
    for _ in track(range(12), True, desc="prune: searching the filter ratio", unit="try"):
        mid = (lo + hi) / 2
        kept = forward_params(_prune_filters(copy.deepcopy(model), mid, method, size=size, seed=seed),
                              example)
        best = min(best, (abs(kept - target), mid))
        lo, hi = (mid, hi) if kept > target else (lo, mid)
    return best[1]


def forward_params(model: nn.Module, example: torch.Tensor) -> int:
    """Parameters of the layers `model(example)` runs: what torch-pruning traces and can shrink
    (joint-x2's forward is its upscaler; its downscaler, used only in training, is not pruned and
    must not count, or the upscaler alone would be cut to reach the whole model's sparsity)."""
    return sum(p.numel() for m in ran_layers(model, example) for p in m.parameters(recurse=False))


def ran_layers(model: nn.Module, example: torch.Tensor) -> set[nn.Module]:
    """The leaf layers `model(example)` runs."""
    ran: set[nn.Module] = set()
    hooks = [m.register_forward_hook(lambda mod, i, o: ran.add(mod)) for m in model.modules()
             if not list(m.children())]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
    return ran


def _prune_filters(model: nn.Module, ratio: float, method: str, *, size: int, seed: int) -> nn.Module:
    import torch_pruning as tp

    if method not in METHODS:
        raise UserError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    # l1 / l2: each filter's own norm (Li et al. 2017, the VDSR reference's ranking); group-l1:
    # DepGraph's sum over every layer the channel touches (its readers' input slices too)
    importance = {
        "l1": lambda: tp.importance.MagnitudeImportance(p=1, normalizer=None, group_reduction="first"),
        "l2": lambda: tp.importance.MagnitudeImportance(p=2, normalizer=None, group_reduction="first"),
        "group-l1": lambda: tp.importance.MagnitudeImportance(p=1, normalizer=None, group_reduction="mean"),
        "random": tp.importance.RandomImportance}[method]()
    example = torch.rand(1, model.upsample_spec.channels, size, size)
    model.eval()
    means = input_means(model, image_like(model.upsample_spec.channels))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            pruner = tp.pruner.MetaPruner(model, example, importance=importance,
                                          pruning_ratio=ratio, ignored_layers=output_layers(model),
                                          global_pruning=False)
            for group in pruner.step(interactive=True):
                compensate(group, means)
                group.prune()
        except Exception as exc:  # torch-pruning cannot trace some graphs (dense concatenations)
            raise UserError(f"torch-pruning cannot prune this architecture's filters uniformly "
                            f"({type(exc).__name__}: {exc})") from None
    # widths changed: read the architecture's keywords back from the pruned tensors
    arch, kwargs = checkpoint.detect_arch(model.state_dict(), "the pruned model",
                                          scale=model.upsample_spec.scale)
    model.upsample_spec = replace(registry.spec_for(arch, kwargs, registry.match_variant(arch, kwargs)),
                                  colorspace=model.upsample_spec.colorspace)  # its hooks stay
    return model


def image_like(channels: int, size: int = 64, count: int = 4) -> torch.Tensor:
    """Smooth random pictures in [0.1, 0.9] (fixed seed): inputs whose layer activations have
    about the means natural images give (uniform noise would drive the first layers elsewhere)."""
    coarse = torch.rand(count, channels, size // 8, size // 8, generator=torch.Generator().manual_seed(0))
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1) * 0.8 + 0.1


def input_means(model: nn.Module, x: torch.Tensor) -> dict[nn.Module, torch.Tensor]:
    """Each full (groups 1) conv with a bias: the mean of each of its input channels on `x`."""
    means, hooks = {}, []
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.groups == 1 and m.bias is not None:
            hooks.append(m.register_forward_pre_hook(
                lambda mod, inp: means.__setitem__(mod, inp[0].detach().mean(dim=(0, 2, 3)))))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return means


def compensate(group, means: dict[nn.Module, torch.Tensor]) -> None:
    """Before a group's channels go: every conv that reads them gets their mean contribution in
    its bias, so it sees them as constants rather than zeros (a removed channel's mean, e.g. a
    tanh's offset, is what it mostly carried). Set5 straight after `prune M --sparsity 0.5`:
    vdsr x2 / x3 / x4 33.06 / 30.11 / 28.25 -> 33.65 / 30.39 / 28.42 dB; espcn-x3 7.9 -> 14.4 dB
    (ESPCN has no residual path: it still needs fine-tuning)."""
    import torch_pruning as tp
    for dep, idxs in group.items:
        conv = dep.target.module
        if dep.handler == tp.prune_conv_in_channels and conv in means and idxs:  # bound methods: ==
            gone = torch.as_tensor(idxs, dtype=torch.long)
            with torch.no_grad():
                conv.bias += conv.weight[:, gone].sum(dim=(2, 3)) @ means[conv][gone]
            kept = torch.ones(len(means[conv]), dtype=torch.bool)
            kept[gone] = False
            means[conv] = means[conv][kept]  # a later group's indices count the channels left


def source_file(model_ref: str) -> Path | None:
    """The file `resolve_model` reads for `model_ref`: a registered name's shipped weights (None:
    untrained), else the path given."""
    return registry.weights_path(model_ref) if registry.is_registered(model_ref) else Path(model_ref)


def stored_half(model_ref: str) -> bool:
    """Whether the weights pruned were stored in float16 (the shipped models are): the pruned file
    keeps their precision; in float32 it held twice the bytes per weight, and `--sparsity 0.3` of
    espcn-x2 wrote 59.8 kB from its 45.4 kB."""
    path = source_file(model_ref)
    if path is None:  # untrained: no file
        return False
    tensors, _ = checkpoint.read_state(path)
    floats = [t for t in tensors.values() if isinstance(t, torch.Tensor) and t.is_floating_point()]
    return bool(floats) and all(t.dtype == torch.float16 for t in floats)


@dataclass
class Pruned:
    """What `prune_checkpoint` wrote: sizes before and after (of the network inference runs), the
    output and its metadata."""
    params: tuple[int, int]
    macs: tuple[int, int]
    path: Path
    meta: dict


def prune_checkpoint(model_ref: str, output: str, *, sparsity: float | None, method: str,
                     filter_ratio: float | None, overwrite: bool) -> Pruned:
    """Prune `model_ref` (a registered name or a checkpoint) and save it to `output`, checked:
    the saved file must rebuild the pruned network (same outputs) from its shape alone."""
    out = Path(output)
    if out.suffix.lower() != ".safetensors":
        raise UserError(f"the pruned model is a safetensors checkpoint: name it *.safetensors, not {out.name}")
    # a registered name's input is its weights file: `-o` naming it with --overwrite replaced the shipped model
    check_new_file(out, overwrite=overwrite, inputs=[p for p in (source_file(model_ref),) if p])
    model, name = resolve_model(model_ref)
    spec = model.upsample_spec
    if spec.kind != "generator":
        raise UserError(f"{model_ref} is a {spec.kind}; prune an upscaler")
    if spec.arch in CANNOT_SHRINK:  # refused at once: torch-pruning took 75 s to fail on it
        raise UserError(f"{name}: {CANNOT_SHRINK[spec.arch]}; prune ESPCN, VDSR or VapSR models")
    example = torch.rand(1, spec.channels, 32, 32)
    before_p, before_m = forward_params(model, example), registry.count_macs(model)
    prune_model(model, sparsity, method, filter_ratio=filter_ratio)
    after_p, after_m = forward_params(model, example), registry.count_macs(model)
    if after_p == before_p:
        asked = f"--filter-ratio {filter_ratio:g}" if filter_ratio is not None else f"--sparsity {sparsity:g}"
        raise UserError(f"{name}: nothing could be pruned at {asked}")
    half = stored_half(model_ref)
    if half:  # rounded now, so that the reload below compares like with like
        model.half().float()
    # the pruned net must be a normal model of its architecture: save, reload, compare outputs
    # (under a temporary name of its own: a fixed "OUT.part" would replace a user's file of that name)
    with atomic_output(out, suffix=".part.safetensors") as tmp:
        checkpoint.save_checkpoint(model, tmp, fp16=half, extra={
            "pruned_from": name, "method": method,
            "sparsity": None if filter_ratio else sparsity, "filter_ratio": filter_ratio,
            "params_removed": round(1 - after_p / before_p, 4),
            **({"untrained": True} if is_untrained(model_ref) else {})})
        reloaded, meta = checkpoint.load_checkpoint(tmp)
        x = torch.rand(1, spec.channels, 24, 24)
        with torch.no_grad():
            same = torch.allclose(reloaded.eval()(x), model(x), atol=1e-5)
        if not same:
            raise UserError(f"{name}: the pruned network does not rebuild as a {meta['arch']} "
                            "from its checkpoint; this architecture cannot be pruned uniformly")
    return Pruned(params=(before_p, after_p), macs=(before_m, after_m), path=out, meta=meta)
