"""int8 models written by `upsample quantize`: their metadata, and a runner on their runtime;
and the int8 IR of a model kept in the cache, which `--backend auto` lets compete (`auto`).

An int8 file is an ONNX (ONNX Runtime QDQ) or OpenVINO IR (NNCF) graph with the model's name,
architecture and scale in its metadata, so it runs with no other file beside it. The cached one
(`cached_path`: the weights hash and scale in its name) is made by `quantize.quantize_to_cache`
(`upsample bench --calib DIR`) or is an `upsample quantize --backend openvino` output copied
there; both are `quantize.quantize_model`'s: NNCF, the first and last convolutions left float.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from .kinds import Backend, Precision
from .runner import Runner
from .sessions import file_session, ort_reason, ov_reason
from ..errors import UserError
from ..models import registry
from .cache import cache_dir, readable_ir

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
    except RuntimeError as exc:  # OpenVINO's: a missing or short .bin, a cut .xml
        raise UserError(f"{path}: not a readable OpenVINO model ({ov_reason(exc, path)})") from None
    except Exception:  # protobuf's decode errors of several types
        raise UserError(f"{path}: not a readable ONNX model (it does not decode as one): a damaged "
                        "file, or another format named .onnx") from None
    if not text and backend == Backend.OPENVINO:  # an `upsample export` IR made before it wrote metadata too
        raise UserError(f"{path} is an OpenVINO graph without upsample's metadata (an `upsample export` "
                        "of an older version, or another tool's), which is not run as a model: give its "
                        "ONNX graph instead, or the model itself (registered name or checkpoint)")
    if not text:
        raise UserError(f"{path} was not written by `upsample quantize` (no {META_KEY} metadata); "
                        "run a checkpoint or a registered model instead")
    try:
        meta = json.loads(text)
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or ("arch" in meta and not isinstance(meta.get("kwargs"), dict)):
        raise UserError(f"{path}: damaged {META_KEY} metadata (not the JSON `upsample quantize` writes); "
                        "quantize the model again")
    if "arch" not in meta:  # `upsample export`'s I/O contract: a graph, not an int8 model
        raise UserError(f"{path} is an `upsample export` OpenVINO graph, which is not run as a model: give "
                        f"its ONNX export instead (`upsample export {meta.get('model', 'MODEL')} --format onnx`) "
                        "or the model itself (registered name or checkpoint)")
    return backend, meta


def load_runner(path: Path, backend: Backend, device: torch.device, *, threads: int | None = None,
                ov_device: str = "CPU", ov_precision: str | None = "f32",
                allow_untrained: bool = False) -> tuple[Runner, str]:
    """(a runner, the model's display name) for an int8 file on the runtime it was made for
    (OpenVINO on `ov_device`, its float layers in `ov_precision`: None, a GPU's or NPU's own).
    A file quantized from random weights is refused unless `allow_untrained` (or
    $UPSAMPLE_ALLOW_UNTRAINED=1), as the model it came from is: its output is noise."""
    file_backend, meta = read_meta(path)
    if meta.get("untrained") and not (allow_untrained or os.environ.get("UPSAMPLE_ALLOW_UNTRAINED") == "1"):
        raise UserError(f"{path} was quantized from {meta.get('name') or meta['arch']}'s untrained (random) "
                        "weights, so its output is noise: quantize a trained model, or set "
                        "UPSAMPLE_ALLOW_UNTRAINED=1 to run it for timing")
    if backend != file_backend:
        raise UserError(f"{path} is an int8 {file_backend} model: run it with --backend {file_backend}")
    spec = registry.spec_for(meta["arch"], meta["kwargs"], meta.get("name") or None)
    try:
        run = file_session(path, backend, device, precision=ov_precision, threads=threads, ov_device=ov_device)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own error types (file_session says OpenVINO's)
        if backend != Backend.ONNXRUNTIME:
            raise
        raise UserError(f"{path}: onnxruntime cannot load it ({ort_reason(exc)})") from None
    runtime = str(backend) if ov_device == "CPU" else f"{backend} {ov_device}"
    runner = Runner(run=run, spec=spec, runtime=runtime, precision=Precision.INT8)
    return runner, f"{meta.get('name') or meta['arch']} int8"


def cached_path(key: str, scale: float) -> Path:
    """Where the int8 IR of the weights `key` (arch-hash) at `scale` is kept in the cache."""
    return cache_dir() / f"{key}-int8-x{scale:g}.xml"


def find_cached(key: str, scale: float) -> Path | None:
    """The cached int8 IR of the weights `key` at `scale`, where OpenVINO reads it whole: a damaged
    one (a .bin cut short, an .xml cut off) is as none, so `--backend auto`'s gate skips it where
    it failed with OpenVINO's traceback, and `--precision int8` says to make it again."""
    path = cached_path(key, scale)
    return path if readable_ir(path) else None


def is_dense(model: nn.Module) -> bool:
    """Only full convolutions (no depth-wise ones, as VapSR has): where int8 kernels pay off."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return bool(convs) and all(m.groups == 1 for m in convs)
