"""`upsample quantize`: static int8 post-training quantization for ONNX Runtime or OpenVINO.

The float network is exported to ONNX as for the runtime backends, then quantized with the
runtime's own tool: ONNX Runtime's `quantize_static` (QDQ format, per-channel int8 weights,
uint8 activations, 99.999th-percentile ranges) or OpenVINO's NNCF (`nncf.quantize`). Calibration inputs are the network's
real inputs: centre crops of the `--calib` images, downscaled with the project's bicubic and fed
through the same Upscaler edges as inference (Y channel, VDSR's pre-upsampling), so the ranges
are those the network will see. The int8 file keeps the model's name, architecture and scale in
its metadata: `upsample eval|image|video --model OUT --backend <that backend>` run it, and
`upsample bench --model MODEL --int8 OUT` times it beside the fp32 model.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..runtime import export
from ..errors import UserError
from ..media.imageio import list_images, read_rgb
from ..runtime.int8 import SUFFIX, write_meta
from ..runtime.kinds import Backend



def calibration_inputs(model, scale: float, folder: str, *, samples: int, size: int) -> list[np.ndarray]:
    """Network inputs (float32 NCHW) made from centre crops of up to `samples` images."""
    from ..data.degrade import make_lr, modcrop
    from ..inference.upscaler import ModelUpscaler

    images, _ = list_images(folder)
    if not images:
        raise UserError(f"--calib {folder}: no images found")
    seen: list[np.ndarray] = []

    def record(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.detach().cpu().float().numpy())
        return model(x)

    up = ModelUpscaler(model, record, scale=scale, name="calibration", backend=Backend.TORCH,
                       device=torch.device("cpu"))
    hr_size = int(round(size * scale))
    for path in images:  # one centre crop per image big enough: equal shapes for histograms
        hr = read_rgb(path)
        if min(hr.shape[:2]) < hr_size:
            continue
        top, left = (hr.shape[0] - hr_size) // 2, (hr.shape[1] - hr_size) // 2
        with torch.no_grad():
            up(make_lr(modcrop(hr[top:top + hr_size, left:left + hr_size], scale), scale))
        if len(seen) == samples:
            break
    if not seen:
        raise UserError(f"--calib {folder}: no image is at least {hr_size}x{hr_size} (--size {size} "
                        f"at x{scale:g}); use smaller --size")
    return seen


def edge_convs(onnx_path: Path) -> list[str]:
    """Names of the first and last Conv nodes: SR nets are most sensitive there (the input image
    and the residual / sub-pixel output), and they are a small share of the compute."""
    import onnx
    convs = [n.name for n in onnx.load(str(onnx_path)).graph.node if n.op_type == "Conv"]
    return sorted({convs[0], convs[-1]}) if convs else []


def quantize_onnxruntime(onnx_path: Path, out: Path, inputs: list[np.ndarray],
                         keep_float: list[str] = ()) -> None:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(inputs)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"input": x}

    pre = onnx_path.with_name("pre.onnx")
    quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=list(keep_float),
                    # 99.999th-percentile ranges: min/max ranges are stretched by rare outliers
                    # (VDSR Set5 x2: -0.12 dB with MinMax, -0.08 with percentile)
                    calibrate_method=CalibrationMethod.Percentile)


def quantize_openvino(onnx_path: Path, out: Path, inputs: list[np.ndarray],
                      keep_float: list[str] = ()) -> None:
    import nncf
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    names = {op.get_friendly_name() for op in model.get_ops()}
    # OpenVINO splits a Conv into "<name>/WithoutBiases" + an Add named <name>
    ignored = nncf.IgnoredScope(names=sorted(n for n in names for k in keep_float
                                             if n == k or n.startswith(k + "/")))
    q = nncf.quantize(model, nncf.Dataset(inputs), subset_size=len(inputs), ignored_scope=ignored)
    ov.save_model(q, str(out), compress_to_fp16=False)


def quantize_model(model, *, scale: float, backend: str, calib: str, out: Path, samples: int,
                   size: int, keep_edges: bool, source: str) -> int:
    """Calibrate `model` at `scale` on `calib` and write the int8 graph to `out` (atomically: a
    temporary folder beside it, renamed into place). Returns the number of calibration crops."""
    inputs = calibration_inputs(model, scale, calib, samples=samples, size=size)
    spec = model.upsample_spec
    meta = {"arch": spec.arch, "kwargs": spec.kwargs, "name": spec.name or "", "source": source,
            "float_edges": keep_edges,
            "calibration": {"folder": str(calib), "images": len(inputs), "lr_size": size, "scale": scale}}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".quantize-") as tmp:
        tmp = Path(tmp)
        onnx_path = tmp / "fp32.onnx"
        onnx_path.write_bytes(export.onnx_bytes(model.cpu().eval(), export.example_input(model, False)))
        q = tmp / ("int8" + SUFFIX[backend])
        print(f"calibrating on {len(inputs)} crops of {calib} ({backend})", file=sys.stderr)
        try:
            keep = edge_convs(onnx_path) if keep_edges else []
            quantize = quantize_onnxruntime if backend == Backend.ONNXRUNTIME else quantize_openvino
            quantize(onnx_path, q, inputs, keep)
        except ImportError as exc:
            raise UserError(f"--backend {backend} needs {exc.name}: pip install "
                            f"{'nncf' if backend == Backend.OPENVINO else 'onnxruntime'}") from None
        write_meta(q, backend, meta)
        if backend == Backend.OPENVINO:  # weights first, the .xml (what loads) last
            q.with_suffix(".bin").replace(out.with_suffix(".bin"))
        q.replace(out)
    return len(inputs)
