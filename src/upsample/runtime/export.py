"""ONNX / OpenVINO export (`upsample export`) and the onnxruntime / openvino runtime backends.

The exported graph is the network itself, float NCHW in [0, 1] (Y or RGB as the model takes),
with dynamic batch, height and width (TorchScript-based `torch.onnx.export`, opset 17: it needs no
onnxscript). `--uint8-io` wraps it to take and return uint8 NHWC RGB: normalisation, YCbCr for
Y-channel models, clamp and rounding happen inside the graph. Inside such a graph the chroma (and
VDSR's input) is upscaled with the runtime's bicubic resize (Keys a = -0.75, no antialiasing),
not MATLAB's imresize, so it is close to, not bit-equal with, `upsample eval`'s torch path.
RRDBNet x1/x2 graphs need H and W to be multiples of 4/2 (the Upscaler pads; a bare graph cannot).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..media.imageio import atomic_write_bytes
from .cache import cache_dir, ov_compiled
from ..data.colour import rgb_to_ycbcr, ycbcr_to_rgb

OPSET = 17
GRAPHS = 2  # in every cache key: bump when a model's exported graph changes (2: VapSR's norm)
FORMATS = ("onnx", "openvino")
SUFFIX_OF = {"onnx": ".onnx", "openvino": ".xml"}  # what each format writes (IR: a .bin beside)


class Uint8RGB(nn.Module):
    """uint8 NHWC RGB -> network -> uint8 NHWC RGB, all inside one exportable graph."""

    def __init__(self, net: nn.Module, scale: float):
        super().__init__()
        self.net, self.spec, self.scale = net, net.upsample_spec, float(scale)

    def _up(self, x):
        return F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)

    def forward(self, x):
        dtype = next(self.net.parameters()).dtype
        rgb = x.permute(0, 3, 1, 2).to(dtype) / 255.0
        ycc = rgb_to_ycbcr(rgb) if self.spec.input == "y" else None
        inp = rgb if ycc is None else ycc[:, :1]
        if self.spec.pre_upsample:
            inp = self._up(inp)
        out = self.net(inp)
        if ycc is not None:
            out = ycbcr_to_rgb(torch.cat([out, self._up(ycc[:, 1:])], 1))
        return (out.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1)


def example_input(model: nn.Module, uint8_io: bool, size: int = 16) -> torch.Tensor:
    spec = model.upsample_spec
    g = torch.Generator().manual_seed(0)
    if uint8_io:
        return torch.randint(0, 256, (1, size, size, 3), generator=g, dtype=torch.uint8)
    return torch.rand(1, spec.channels, size, size, generator=g)


def onnx_bytes(module: nn.Module, example: torch.Tensor, *, opset: int = OPSET) -> bytes:
    """The module as ONNX with dynamic batch/height/width on its input and output."""
    f = io.BytesIO()
    h = 1 if example.dtype == torch.uint8 else 2  # height axis: NHWC uint8 or NCHW float
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notes
        torch.onnx.export(module.eval(), (example,), f, dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch", h: "height", h + 1: "width"},
                                        "output": {0: "batch", h: "out_height", h + 1: "out_width"}})
    return f.getvalue()


def _save_openvino(onnx_path: Path, xml_path: Path, fp16: bool) -> None:
    """ONNX file -> OpenVINO IR (.xml + .bin), written in a temp folder then renamed into place."""
    import openvino as ov
    ov_model = ov.convert_model(str(onnx_path))
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{xml_path.stem}.", dir=xml_path.parent))
    try:
        ov.save_model(ov_model, str(tmpdir / "model.xml"), compress_to_fp16=fp16)
        os.replace(tmpdir / "model.bin", xml_path.with_suffix(".bin"))
        os.replace(tmpdir / "model.xml", xml_path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


# ------------------------------------------------------------------------- the export cache


def weights_hash(model: nn.Module) -> str:
    spec = model.upsample_spec
    h = hashlib.sha256(json.dumps([spec.arch, spec.kwargs, torch.__version__, OPSET, GRAPHS],
                                  sort_keys=True).encode())
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def cached_onnx(model: nn.Module, key: str | None = None, example: torch.Tensor | None = None) -> Path:
    """`model` (the float network, or a wrapper graph named by `key`) as ONNX under the cache
    folder, exported once per weights hash."""
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        folder = Path(tempfile.mkdtemp(prefix="upsample-export-"))
    if key is None:
        key = f"{model.upsample_spec.arch}-{weights_hash(model)}"
    path = folder / f"{key}.onnx"
    if not path.exists():
        net = model.cpu().eval()
        atomic_write_bytes(path, onnx_bytes(net, example if example is not None else example_input(net, False)))
    return path


def cached_ir(model: nn.Module, key: str | None = None, example: torch.Tensor | None = None) -> Path:
    """The OpenVINO IR (.xml) of `cached_onnx(model, key, example)`, converted once."""
    onnx_path = cached_onnx(model, key, example)
    xml = onnx_path.with_suffix(".xml")
    if not xml.exists():
        _save_openvino(onnx_path, xml, fp16=False)
    return xml


# ------------------------------------------------------------------ `upsample export`'s files


def export_model(model: nn.Module, fmt: str, out: Path, *, fp16: bool = False, uint8_io: bool = False,
                 scale: float | None = None) -> float:
    """Write `model` as ONNX or OpenVINO IR; returns the max abs difference of the exported
    graph from PyTorch (fp32) on a random image (uint8 levels with uint8_io)."""
    model = model.cpu().eval()
    ref_module = Uint8RGB(model, scale) if uint8_io else model
    example = example_input(model, uint8_io, size=32)
    with torch.no_grad():
        ref = ref_module(example)
    net = model
    if fp16:
        import copy
        net = copy.deepcopy(model).half()
        net.upsample_spec = model.upsample_spec
    module = Uint8RGB(net, scale) if uint8_io else net
    trace_in = example if uint8_io else example.to(next(net.parameters()).dtype)
    data = onnx_bytes(module, trace_in)
    feed = example.numpy() if uint8_io else trace_in.numpy()
    if fmt == "onnx":
        atomic_write_bytes(out, data)
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # errors only, as the runtime sessions
        session = ort.InferenceSession(str(out), opts, providers=["CPUExecutionProvider"])
        got = session.run(None, {"input": feed})[0]
    else:
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = Path(tmp) / "model.onnx"
            onnx_path.write_bytes(data)
            _save_openvino(onnx_path, out, fp16=fp16)
        got = np.asarray(ov_compiled(out)(feed)[0])
    diff = np.abs(got.astype(np.float64) - ref.numpy().astype(np.float64))
    return float(diff.max())


def default_output(name: str, spec, scale: float | None, fmt: str, *, fp16: bool, uint8_io: bool) -> Path:
    """model[-xS][-fp16][-uint8].onnx|.xml in the current folder, named after the model."""
    stem = Path(name).stem if Path(name).suffix else name
    tags = ("-fp16" if fp16 else "") + ("-uint8" if uint8_io else "")
    at_scale = f"-x{scale:g}" if spec.scale is None and scale else ""
    return Path(f"{stem}{at_scale}{tags}{SUFFIX_OF[fmt]}")


def file_size(path: Path) -> int:
    return path.stat().st_size + (path.with_suffix(".bin").stat().st_size if path.suffix == ".xml" else 0)

