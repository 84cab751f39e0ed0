"""Checkpoints: our safetensors files with metadata, and state dicts from the ecosystem.

Our format: safetensors (loading never runs code) whose metadata holds the architecture, its
constructor keywords (JSON), scale, input mode, registry name, training config and an `extra`
JSON (e.g. an eval summary). Written atomically (temp file + os.replace), optionally in fp16.

Foreign files (.pth/.pt/...) are read with `torch.load(weights_only=True)`: BasicSR
(`params_ema` preferred over `params`), `state_dict`/`model` wrappers, `module.`/`netG.` prefixes,
original-ESRGAN (`model.N`, `RRDB_trunk`) names, the VapSR beta names and the common VDSR port are
mapped to ours; the architecture and its keywords are then detected from tensor names and shapes.
Loading is always strict: a mismatch is one UserError naming the missing/unexpected keys.

`upsample interpolate A B --alpha a`: parameter-wise (1 - a) A + a B of two such checkpoints.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import struct
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from . import registry
from ..errors import UserError
from ..media.imageio import atomic_output

FORMAT = "upsample"
FORMAT_VERSION = "1"
_WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model", "net_g", "generator")


# ---------------------------------------------------------------------------------- saving


def save_checkpoint(model: nn.Module, path: str | os.PathLike, *, config: dict | None = None,
                    extra: dict | None = None, fp16: bool = False) -> Path:
    """Write `model`'s weights and how to rebuild it to a .safetensors file, atomically."""
    from safetensors.torch import save_file
    path = Path(path)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    spec = getattr(model, "upsample_spec", None)
    if spec is None:  # a bare architecture instance: recover its keywords from its tensors
        arch, kwargs = detect_arch(state, str(path))
        spec = registry.spec_for(arch, kwargs, registry.match_variant(arch, kwargs))
    if fp16:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "arch": spec.arch,
            "kwargs": json.dumps(spec.kwargs, sort_keys=True), "name": spec.name or "",
            "scale": json.dumps(spec.scale), "input": spec.input, "kind": spec.kind,
            "dtype": "float16" if fp16 else "float32"}
    if config is not None:
        meta["config"] = json.dumps(config, default=str)
    if extra is not None:
        meta["extra"] = json.dumps(extra, default=str)
    with atomic_output(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path


# --------------------------------------------------------------------------------- reading


def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n < 100_000_000 and head[8:9] == b"{"


def read_state(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, safetensors metadata or {}) of a checkpoint file; UserError for anything unreadable."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise UserError(f"not a checkpoint file: {path}")
    if path.stat().st_size == 0:
        raise UserError(f"checkpoint {path} is empty")
    if path.suffix.lower() == ".safetensors" or _is_safetensors(path):
        from safetensors import safe_open
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises its own error types for every corruption
            raise UserError(f"cannot read {path}: {str(exc).splitlines()[0]}; "
                            "the file is corrupt or not a safetensors checkpoint") from None
        return tensors, meta
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04" and magic[:1] != b"\x80":  # torch zip archive / legacy pickle
        raise UserError(f"cannot read {path}: not a checkpoint (neither safetensors nor a PyTorch file)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. notes about the pickle protocol version
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors of many types; weights_only refuses code
        text = str(exc)
        refused = re.search(r"WeightsUnpickler error: (.*?)(?: was not an allowed|\.?\n|$)", text)
        if refused:
            raise UserError(f"cannot read {path}: it holds more than tensors ({refused.group(1)}) and "
                            "unpickling it could run code; re-save it as a plain state dict") from None
        reason = text.splitlines()[0].split(". ")[0] if text else type(exc).__name__
        raise UserError(f"cannot read {path} as a PyTorch checkpoint: {reason}; the file is corrupt "
                        "or truncated") from None
    return unwrap_state(obj, path), {}


def unwrap_state(obj, path) -> dict[str, torch.Tensor]:
    """The tensor dict inside a loaded .pth: BasicSR `params_ema` > `params`, then other wrappers."""
    while isinstance(obj, Mapping) and not _is_state(obj):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj or not _is_state(obj):
        raise UserError(f"{path} holds no state dict of tensors (keys: {_preview(obj)})")
    return dict(obj)


def _is_state(d: Mapping) -> bool:
    return bool(d) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())


def _preview(obj) -> str:
    if isinstance(obj, Mapping):
        keys = list(obj)[:6]
        return ", ".join(map(str, keys)) + (" ..." if len(obj) > 6 else "")
    return type(obj).__name__


# ----------------------------------------------------------------------- ecosystem key names


def normalize_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map known foreign parameter names onto ours (BasicSR-style); unknown names are kept."""
    for prefix in ("module.", "netG.", "generator."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    keys = set(state)
    if "model.0.weight" in keys and any(k.startswith("model.1.sub.") for k in keys):
        return _from_esrgan_sequential(state)
    if any(k.startswith("RRDB_trunk.") for k in keys):
        ren = [(r"^RRDB_trunk\.", "body."), (r"\.RDB(\d)\.", r".rdb\1."), (r"^trunk_conv\.", "conv_body."),
               (r"^upconv(\d)\.", r"conv_up\1."), (r"^HRconv\.", "conv_hr.")]
        return _rename(state, ren)
    if any(".spatial_gating_unit." in k for k in keys):  # VapSR beta (vapsr_beta.py) names
        ren = [(r"\.spatial_gating_unit\.conv0\.", ".atten_branch.depthwise."),
               (r"\.spatial_gating_unit\.conv_spatial\.", ".atten_branch.depthwise_dilated."),
               (r"\.spatial_gating_unit\.conv1\.", ".atten_branch.pointwise."),
               (r"^(body\.\d+)\.norm\.", r"\1.pixel_norm.")]
        return _rename(state, ren)
    if "input.weight" in keys and any(k.startswith("residual_layer.") for k in keys):  # VDSR port
        ren = [(r"^input\.", "conv_first."), (r"^residual_layer\.(\d+)\.conv\.", r"body.\1."),
               (r"^output\.", "conv_last.")]
        return _rename(state, ren)
    return state


def _rename(state: dict, rules: list[tuple[str, str]]) -> dict:
    out = {}
    for k, v in state.items():
        for pat, rep in rules:
            k = re.sub(pat, rep, k)
        out[k] = v
    return out


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


# ---------------------------------------------------------------- detection from tensors


def _count(keys, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in keys if (m := rx.match(k))})


def _shape(state, key) -> tuple:
    return tuple(state[key].shape)


def detect_arch(state: dict[str, torch.Tensor], source: str = "checkpoint") -> tuple[str, dict]:
    """(arch, constructor keywords) from tensor names and shapes; UserError when nothing fits."""
    keys = set(state)
    try:
        if {"conv_first.weight", "body.0.rdb1.conv1.weight", "conv_last.weight"} <= keys:
            feat, cin = _shape(state, "conv_first.weight")[:2]
            cout = _shape(state, "conv_last.weight")[0]
            factor = cin // cout if cin % cout == 0 else 0
            if "conv_up2.weight" in keys:
                scale = {1: 4, 4: 2, 16: 1}.get(factor)
            else:
                scale = 3 if factor == 1 else None
            if scale is None:
                raise UserError(f"{source}: RRDBNet with {cin} input and {cout} output channels "
                                "matches no scale (1, 2, 3 or 4)")
            return "rrdbnet", {"scale": scale, "num_in_ch": cin // factor, "num_out_ch": cout,
                               "num_feat": feat, "num_block": _count(keys, r"^body\.(\d+)\.rdb1\."),
                               "num_grow_ch": _shape(state, "body.0.rdb1.conv1.weight")[0]}
        if {"conv_first.weight", "body.0.proj_1.weight", "body.0.atten_branch.depthwise.weight"} <= keys:
            feat, cin = _shape(state, "conv_first.weight")[:2]
            kwargs = {"num_in_ch": cin, "num_feat": feat, "num_block": _count(keys, r"^body\.(\d+)\.proj_1\."),
                      "d_atten": _shape(state, "body.0.proj_1.weight")[0],
                      "conv_groups": feat // _shape(state, "conv_body.weight")[1],
                      "plain_3x3": _shape(state, "body.0.atten_branch.depthwise.weight")[-1] == 3}
            if "upsampler.3.weight" in keys:  # x4: conv, shuffle, lrelu, conv(16 -> 4C), shuffle
                kwargs.update(scale=4, num_out_ch=_shape(state, "upsampler.3.weight")[0] // 4)
            elif "upsampler.2.weight" in keys:  # x2/x3: conv, lrelu, conv(56 -> s^2 C), shuffle
                n = _shape(state, "upsampler.2.weight")[0]
                scale = next((s for s in (2, 3) if n % (s * s) == 0 and n // (s * s) in (1, 3)), None)
                if scale is None:
                    raise UserError(f"{source}: VapSR upsampler with {n} output channels matches no scale")
                kwargs.update(scale=scale, num_out_ch=n // (scale * scale))
            else:
                raise UserError(f"{source}: VapSR without a known upsampler (upsampler.2 or upsampler.3)")
            return "vapsr", kwargs
        if {"down.head.weight", "down.tail.weight", "up.first_part.0.weight"} <= keys:
            hr_feat, cin = _shape(state, "down.head.weight")[:2]
            n_up = _shape(state, "up.last_part.0.weight")[0]
            n_conv = _count(keys, r"^down\.body\.(\d+)\.weight$")
            return "joint", {"scale": math.isqrt(n_up // cin), "num_in_ch": cin, "hr_feat": hr_feat,
                             "down_feat": _shape(state, "down.tail.weight")[1] if n_conv else 32,
                             "down_conv": n_conv,
                             "num_feat": _shape(state, "up.first_part.0.weight")[0],
                             "mid_feat": _shape(state, "up.first_part.2.weight")[0]}
        if {"first_part.0.weight", "first_part.2.weight", "last_part.0.weight"} <= keys:
            feat, cin = _shape(state, "first_part.0.weight")[:2]
            n = _shape(state, "last_part.0.weight")[0]
            scale = math.isqrt(n // cin)
            if scale * scale * cin != n:
                raise UserError(f"{source}: ESPCN with {n} output channels for {cin} input channels "
                                "is not a square scale")
            return "espcn", {"scale": scale, "num_in_ch": cin, "num_feat": feat,
                             "mid_feat": _shape(state, "first_part.2.weight")[0]}
        if {"conv_first.weight", "body.0.weight", "conv_last.weight"} <= keys and \
                len(_shape(state, "body.0.weight")) == 4:
            feat, cin = _shape(state, "conv_first.weight")[:2]
            return "vdsr", {"num_in_ch": cin, "num_feat": feat,
                            "num_layers": _count(keys, r"^body\.(\d+)\.weight$") + 2,
                            "bias": "conv_first.bias" in keys}
        if {"conv0_0.weight", "linear1.weight", "linear2.weight"} <= keys:
            feat, cin = _shape(state, "conv0_0.weight")[:2]
            return "vgg_discriminator", {"num_in_ch": cin, "num_feat": feat,
                                         "input_size": 256 if "conv5_0.weight" in keys else 128}
        if {"conv0.weight", "conv1.weight_orig", "conv9.weight"} <= keys:
            feat, cin = _shape(state, "conv0.weight")[:2]
            return "unet_discriminator_sn", {"num_in_ch": cin, "num_feat": feat}
    except (KeyError, IndexError, ZeroDivisionError) as exc:
        raise UserError(f"{source}: tensor names look like a known architecture but {exc} "
                        "does not fit it") from None
    sample = ", ".join(sorted(keys)[:5])
    raise UserError(f"{source}: cannot tell the architecture from its tensors ({sample}, ...); "
                    f"known: {', '.join(registry.ARCHS)}")


# --------------------------------------------------------------------------------- loading


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict(strict=True), with every mismatch reported as one UserError."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        arch = model.upsample_spec.arch if hasattr(model, "upsample_spec") else type(model).__name__

        def few(items):
            return ", ".join(items[:4]) + (f" (+{len(items) - 4} more)" if len(items) > 4 else "")
        parts = [f"{label} {few(items)}" for label, items in
                 (("missing keys:", missing), ("unexpected keys:", unexpected), ("shape mismatches:", shapes))
                 if items]
        raise UserError(f"{source} does not fit {arch}: " + "; ".join(parts))
    model.load_state_dict({k: state[k].to(own[k].dtype) for k in own}, strict=True)


def load_checkpoint(path: str | os.PathLike, *, device: str | torch.device = "cpu"
                    ) -> tuple[nn.Module, dict]:
    """(model in eval mode on `device`, meta dict) from our safetensors or a foreign state dict."""
    tensors, raw = read_state(path)
    if raw.get("format") == FORMAT:
        try:
            arch, kwargs = raw["arch"], json.loads(raw["kwargs"])
            meta = {"source": FORMAT, "arch": arch, "kwargs": kwargs, "name": raw.get("name") or None,
                    "config": json.loads(raw["config"]) if raw.get("config") else None,
                    "extra": json.loads(raw["extra"]) if raw.get("extra") else None,
                    "dtype": raw.get("dtype", "float32")}
        except (KeyError, ValueError) as exc:
            raise UserError(f"{path}: damaged upsample metadata ({exc})") from None
    else:
        tensors = normalize_keys(tensors)
        arch, kwargs = detect_arch(tensors, str(path))
        meta = {"source": "detected", "arch": arch, "kwargs": kwargs,
                "name": registry.match_variant(arch, kwargs), "config": None, "extra": None,
                "dtype": str(next(iter(tensors.values())).dtype).removeprefix("torch.")}
    model = registry.build(arch, kwargs, meta["name"])
    load_state_strict(model, tensors, str(path))
    spec = model.upsample_spec
    meta.update(scale=spec.scale, input=spec.input, kind=spec.kind)
    return model.to(device).eval(), meta


# ---------------------------------------------------------------------------- interpolation


def interpolate_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], alpha: float
                       ) -> dict[str, torch.Tensor]:
    """(1 - alpha) a + alpha b per tensor; alpha 0 / 1 return a's / b's tensors themselves."""
    if alpha == 0:
        return dict(a)
    if alpha == 1:
        return dict(b)
    out = {}
    for k, ta in a.items():
        tb = b[k]
        if ta.is_floating_point():
            out[k] = ((1 - alpha) * ta.double() + alpha * tb.double()).to(ta.dtype)
        else:  # integer buffers (BatchNorm step counts): not meaningful to blend
            out[k] = ta
    return out


def interpolate_checkpoints(path_a, path_b, alpha: float, out, *, fp16: bool = False) -> Path:
    model_a, meta_a = load_checkpoint(path_a)
    model_b, meta_b = load_checkpoint(path_b)
    if (meta_a["arch"], registry.full_kwargs(meta_a["arch"], meta_a["kwargs"])) != \
            (meta_b["arch"], registry.full_kwargs(meta_b["arch"], meta_b["kwargs"])):
        raise UserError(f"{path_a} ({meta_a['arch']} {json.dumps(meta_a['kwargs'])}) and {path_b} "
                        f"({meta_b['arch']} {json.dumps(meta_b['kwargs'])}) are different architectures")
    sa, sb = model_a.state_dict(), model_b.state_dict()
    if sa.keys() != sb.keys() or any(sa[k].shape != sb[k].shape for k in sa):
        raise UserError(f"{path_a} and {path_b} have different parameter shapes: not the same architecture")
    model_a.load_state_dict(interpolate_states(sa, sb, alpha))
    extra = {"interpolated": {"a": str(path_a), "b": str(path_b), "alpha": alpha}}
    return save_checkpoint(model_a, out, config=meta_a.get("config"), extra=extra, fp16=fp16)


def run(args: argparse.Namespace) -> int:
    try:
        alpha = float(args.alpha)
    except ValueError:
        raise UserError(f"--alpha must be a number in [0, 1], got {args.alpha!r}") from None
    if not 0 <= alpha <= 1:
        raise UserError(f"--alpha must be in [0, 1], got {args.alpha}")
    out = Path(args.output)
    if out.suffix.lower() != ".safetensors":
        raise UserError(f"the output is a safetensors checkpoint: name it *.safetensors, not {out.name}")
    if out.exists() and not args.force:
        raise UserError(f"{out} exists; use --force to overwrite it")
    interpolate_checkpoints(args.a, args.b, alpha, out, fp16=args.fp16)
    print(f"wrote {out} = {1 - alpha:g} * {args.a} + {alpha:g} * {args.b}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("interpolate", help="blend two checkpoints of one architecture parameter-wise")
    p.add_argument("a", help="checkpoint A (alpha 0)")
    p.add_argument("b", help="checkpoint B (alpha 1)")
    p.add_argument("--alpha", required=True, help="weight of B: the result is (1-alpha)*A + alpha*B")
    p.add_argument("-o", "--output", required=True, help="output .safetensors file")
    p.add_argument("--fp16", action="store_true", help="store the result in float16")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.set_defaults(func=run)
