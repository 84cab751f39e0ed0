"""int8 models written by `upsample quantize`: their metadata, and a runner on their runtime;
and the int8 IR of a model kept in the cache, which `--backend auto` lets compete (`auto`).

An int8 file is an ONNX (ONNX Runtime QDQ) or OpenVINO IR (NNCF) graph with the model's name,
architecture and scale in its metadata, so it runs with no other file beside it. The cached one
(`cached_path`: the weights hash and scale in its name) is made once by `quantize_to_cache` -
OpenVINO NNCF, the first and last convolutions left float, calibrated on the `--calib` images as
the network sees them - or is an `upsample quantize --backend openvino` output copied there.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .kinds import Backend, Precision
from .runner import Runner
from .sessions import file_session
from ..errors import UserError
from ..models import registry
from .cache import cache_dir

SUFFIX = {Backend.ONNXRUNTIME: ".onnx", Backend.OPENVINO: ".xml"}
BACKEND_OF = {v: k for k, v in SUFFIX.items()}
META_KEY = "upsample"


def write_meta(path: Path, backend: str, meta: dict) -> None:
    text = json.dumps(meta, sort_keys=True)
    if backend == Backend.ONNXRUNTIME:
        import onnx
        m = onnx.load(str(path))
        del m.metadata_props[:]
        onnx.helper.set_model_props(m, {META_KEY: text})
        onnx.save(m, str(path))
    else:
        import openvino as ov
        core = ov.Core()
        m = core.read_model(str(path))
        m.set_rt_info(text, META_KEY)
        tmp = path.with_name("meta-" + path.name)
        ov.save_model(m, str(tmp), compress_to_fp16=False)
        tmp.replace(path)
        tmp.with_suffix(".bin").replace(path.with_suffix(".bin"))


def read_meta(path: Path) -> tuple[str, dict]:
    """(backend, metadata) of an int8 file written by `upsample quantize`."""
    if not path.is_file():
        raise UserError(f"model file not found: {path}")
    try:
        if path.suffix.lower() == ".onnx":
            import onnx
            props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
            backend, text = Backend.ONNXRUNTIME, props.get(META_KEY)
        else:
            import openvino as ov
            m = ov.Core().read_model(str(path))
            backend = Backend.OPENVINO
            text = m.get_rt_info([META_KEY]).astype(str) if m.has_rt_info([META_KEY]) else None
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{path}: not a readable ONNX / OpenVINO model ({exc})") from None
    if not text:
        raise UserError(f"{path} was not written by `upsample quantize` (no {META_KEY} metadata); "
                        "run a checkpoint or a registered model instead")
    return backend, json.loads(text)


def load_runner(path: Path, backend: Backend, device: torch.device) -> tuple[Runner, str]:
    """(a runner, the model's display name) for an int8 file on the runtime it was made for."""
    file_backend, meta = read_meta(path)
    if backend != file_backend:
        raise UserError(f"{path} is an int8 {file_backend} model: run it with --backend {file_backend}")
    spec = registry.spec_for(meta["arch"], meta["kwargs"], meta.get("name") or None)
    runner = Runner(run=file_session(path, backend, device), spec=spec, runtime=str(backend),
                    precision=Precision.INT8)
    return runner, f"{meta.get('name') or meta['arch']} int8"


def cached_path(key: str, scale: float) -> Path:
    """Where the int8 IR of the weights `key` (arch-hash) at `scale` is kept in the cache."""
    return cache_dir() / f"{key}-int8-x{scale:g}.xml"


def find_cached(key: str, scale: float) -> Path | None:
    path = cached_path(key, scale)
    return path if path.is_file() and path.with_suffix(".bin").is_file() else None


def is_dense(model: nn.Module) -> bool:
    """Only full convolutions (no depth-wise ones, as VapSR has): where int8 kernels pay off."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return bool(convs) and all(m.groups == 1 for m in convs)


def calibration_inputs(model: nn.Module, scale: float, folder: str, *, samples: int = 32,
                       size: int = 64) -> list[np.ndarray]:
    """The network's inputs (float32 NCHW) for centre crops of up to `samples` images of
    `folder`: LR by MATLAB bicubic, then Y (bicubic-upscaled for VDSR) as inference feeds it."""
    from ..data.colour import rgb_to_ycbcr
    from ..data.degrade import imresize, make_lr
    from ..media.imageio import list_images, read_rgb
    spec, hr_side = model.upsample_spec, int(round(size * scale))
    found = []
    for path in list_images(folder)[0]:
        hr = read_rgb(path)
        if min(hr.shape[:2]) < hr_side:
            continue
        top, left = (hr.shape[0] - hr_side) // 2, (hr.shape[1] - hr_side) // 2
        x = make_lr(np.ascontiguousarray(hr[top:top + hr_side, left:left + hr_side]), scale)
        if spec.input == "y":
            x = rgb_to_ycbcr(x)[:, :1]
        if spec.pre_upsample:
            x = imresize(x, size=(hr_side, hr_side))
        found.append(x.numpy())
        if len(found) == samples:
            break
    if not found:
        raise UserError(f"--calib {folder}: no image of at least {hr_side}x{hr_side} pixels")
    return found


def quantize_to_cache(model: nn.Module, key: str, scale: float, calib: str, *, samples: int = 32,
                      size: int = 64) -> Path:
    """Make the cached int8 IR of `model` (see the module docstring) once; its path."""
    from . import export
    import nncf
    import openvino as ov
    inputs = calibration_inputs(model, scale, calib, samples=samples, size=size)
    out = cached_path(key, scale)
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"int8: calibrating {key} x{scale:g} on {len(inputs)} crops of {calib}", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".int8-") as tmp:
        onnx_path = Path(tmp) / "fp32.onnx"
        onnx_path.write_bytes(export.onnx_bytes(model.cpu().eval(), export.example_input(model, False)))
        net = ov.convert_model(str(onnx_path))
        convs = [op.get_friendly_name() for op in net.get_ordered_ops() if op.get_type_name() == "Convolution"]
        # the image-facing layers stay float: their rounding is what costs PSNR (see fp32_ends)
        keep = nncf.IgnoredScope(names=sorted({convs[0], convs[-1]}) if convs else [])
        q = nncf.quantize(net, nncf.Dataset(inputs), subset_size=len(inputs), ignored_scope=keep)
        spec = model.upsample_spec
        q.set_rt_info(json.dumps({"arch": spec.arch, "kwargs": spec.kwargs, "name": spec.name or "",
                                  "source": key, "float_edges": True, "calibration": {
                                      "folder": str(calib), "images": len(inputs), "lr_size": size,
                                      "scale": scale}}, sort_keys=True), META_KEY)
        tmp_xml = Path(tmp) / "int8.xml"
        ov.save_model(q, str(tmp_xml), compress_to_fp16=False)
        os.replace(tmp_xml.with_suffix(".bin"), out.with_suffix(".bin"))
        os.replace(tmp_xml, out)  # the .xml last: its presence says the pair is whole
    return out

