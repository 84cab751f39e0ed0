"""Static int8 post-training quantization, for ONNX Runtime or OpenVINO: `upsample quantize`
writes its file with `quantize_model`, and `--backend auto`'s cached int8 IR (`int8.cached_path`,
which `upsample bench --calib DIR` asks for) is made by the same code (`quantize_to_cache`).

The float network is exported to ONNX as for the runtime backends, then quantized with the
runtime's own tool: ONNX Runtime's `quantize_static` (QDQ format, per-channel int8 weights,
uint8 activations, 99.999th-percentile ranges) or OpenVINO's NNCF (`quantize_openvino`).
Calibration inputs are the network's real inputs: centre crops of the `--calib` images,
downscaled with the project's bicubic and brought to the network as `ModelUpscaler` does (Y
channel, VDSR's pre-upsampling, padding), so the ranges are those the network will see. The int8
file keeps the model's name, architecture and scale in its metadata: `upsample eval|image|video
--model OUT --backend <that backend>` run it, and `upsample bench --model MODEL --int8 OUT` times
it beside the fp32 model. An OpenVINO one with float edges is also copied into the cache, where
`--backend auto` lets it compete under the quality gate.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import export
from .cache import cache_dir
from .export import model_key  # also this module's name for it (bench, tests)
from .int8 import SUFFIX, cached_path, write_meta
from .kinds import Backend
from ..errors import UserError
from ..media.progress import LINE_INTERVAL

# what the calibration is doing now, for `_heartbeat`'s lines (one quantization at a time)
_stage = ["calibrating"]


def state_hash(model: nn.Module) -> str:
    """sha256 of the weights alone (names, shapes, values): which weights an int8 file was made
    from, unchanged by the torch version or the graph recipe that `model_key` also hashes."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu", torch.float32).contiguous()
        h.update(f"{name}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:24]


def calibration_order(images: list, folder: str) -> list:
    """`images` of `folder` in the order calibration takes them: by hash of their names, not the
    listing's, so that a folder of a video's frames gives frames from all over it."""
    return sorted(images, key=lambda p: hashlib.sha1(os.fsencode(os.path.relpath(p, folder))).digest())


def calibration_inputs(model: nn.Module, scale: float, folder: str, *, samples: int = 32,
                       size: int = 64, too_small: str = "use smaller --size") -> list[np.ndarray]:
    """The network's inputs (float32 NCHW) for centre crops of up to `samples` images of
    `folder`, LR side `size`: what `ModelUpscaler` feeds the network (Y for Y models, bicubic-
    upscaled for pre-upsampling ones, padded to the network's multiple), without its import.
    `too_small`: the advice when no image is large enough (in the words of the command's options)."""
    from ..data.colour import rgb_to_ycbcr
    from ..data.degrade import imresize, make_lr, modcrop
    from ..media.imageio import list_images, read_rgb
    if "benchmark" in Path(os.path.abspath(folder)).parts:  # as `train` refuses them (data.pairs)
        raise UserError(f"--calib {folder}: a benchmark folder; calibrate on training images "
                        "(benchmarks are for reporting only)")
    try:
        images, _ = list_images(folder)
    except UserError as exc:  # "not a folder: X" names no option
        raise UserError(f"--calib {exc}; give a folder of training images") from None
    if not images:
        raise UserError(f"--calib {folder}: no images found")
    spec, hr_side, found, small, unread = model.upsample_spec, int(round(size * scale)), [], 0, []
    images = calibration_order(images, folder)
    for path in images:  # one centre crop per image big enough: equal shapes for histograms
        try:
            hr = read_rgb(path)
        except UserError as exc:  # a damaged file among many: calibrate on the others
            unread.append(str(exc))
            continue
        if min(hr.shape[:2]) < hr_side:
            small += 1
            continue
        top, left = (hr.shape[0] - hr_side) // 2, (hr.shape[1] - hr_side) // 2
        x = make_lr(modcrop(np.ascontiguousarray(hr[top:top + hr_side, left:left + hr_side]), scale), scale)
        if spec.input == "y":
            x = rgb_to_ycbcr(x)[:, :1]
        if spec.pre_upsample:
            x = imresize(x, scale)
        h, w = x.shape[-2:]
        if -h % spec.pad_multiple or -w % spec.pad_multiple:
            x = F.pad(x, (0, -w % spec.pad_multiple, 0, -h % spec.pad_multiple), mode="reflect")
        found.append(x.numpy())
        if len(found) == samples:
            break
    if found and small:  # fewer crops than images: say why
        print(f"int8: skipped {small} image(s) of {folder} smaller than {hr_side}x{hr_side}", file=sys.stderr)
    if unread and (found or small):
        print(f"int8: skipped {len(unread)} unreadable image(s) of {folder}, e.g. {unread[0]}", file=sys.stderr)
    elif unread:
        raise UserError(f"--calib {folder}: none of its {len(unread)} image(s) can be read, e.g. {unread[0]}")
    if not found:
        raise UserError(f"--calib {folder}: no image is at least {hr_side}x{hr_side} (LR crops of "
                        f"{size} px at x{scale:g}); {too_small}")
    return found


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
    # its calibration prints "Collecting tensor data ..." and a table of percentiles per tensor
    # on stdout, where results go: kept to be shown only if it fails
    with _tool_output_kept():
        quantize_static(
            str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=list(keep_float),
            # a Conv's output feeds its activation (Tanh, ReLU) at full range; quantized there with
            # one scale for all channels ESPCN x2 lost 1.35 dB of Set5 (36.40 -> 35.05; 36.34
            # without, as OpenVINO's NNCF gives)
            extra_options={"OpTypesToExcludeOutputQuantization": ["Conv"]},
            # 99.999th-percentile ranges: min/max ranges are stretched by rare outliers (VDSR Set5
            # x2: -0.12 dB with MinMax, -0.08 with percentile)
            calibrate_method=CalibrationMethod.Percentile)


def quantize_openvino(onnx_path: Path, out: Path, inputs: list[np.ndarray],
                      keep_float: list[str] = ()) -> None:
    # NNCF logs and draws its progress on stdout, where `bench --json` and `quantize` print
    # their results: on stderr instead (its log handler takes the stdout of its import), its
    # progress bars only (its INFO lines list every layer it leaves float)
    import logging

    import nncf
    nncf.set_log_level(logging.WARNING)  # after its import, which sets INFO
    with contextlib.redirect_stdout(sys.stderr):
        _nncf_int8(onnx_path, out, inputs, keep_float)


@contextlib.contextmanager
def _heartbeat(backend: str, stream=None):
    """A line every `LINE_INTERVAL` s while the runtime's tool calibrates (stage and time taken):
    ONNX Runtime's says nothing (its output is kept back), and NNCF's bars are drawn only at their
    end where stderr is no terminal (vdsr: 50 s without a line). On a terminal NNCF's bars show."""
    stream = stream or sys.stderr
    if backend == Backend.OPENVINO and stream.isatty():
        yield
        return
    done, start = threading.Event(), time.monotonic()

    def beat():
        while not done.wait(LINE_INTERVAL):
            took = int(time.monotonic() - start)
            stream.write(f"int8: {_stage[0]}, {took // 60:02d}:{took % 60:02d} elapsed\n")
            stream.flush()
    _stage[0] = "calibrating"
    thread = threading.Thread(target=beat, daemon=True, name="int8-heartbeat")
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


@contextlib.contextmanager
def _tool_output_kept():
    """A tool's printing (stdout and stderr, Python's) kept back, and shown only where it fails."""
    import io
    kept = io.StringIO()
    try:
        with contextlib.redirect_stdout(kept), contextlib.redirect_stderr(kept):
            yield
    except Exception:  # a failure: what the tool said is the clue (not on Ctrl-C)
        sys.stderr.write(kept.getvalue()[-4000:])
        raise


def _float_graph(onnx_path: Path):
    """The ONNX file as an OpenVINO model. Its converter forks a telemetry sender that it ends
    with SIGTERM; `export.forks_end_quietly` keeps that child from printing a traceback."""
    import openvino as ov
    with export.forks_end_quietly():
        return ov.convert_model(str(onnx_path))


def _nncf_int8(onnx_path: Path, out: Path, inputs: list[np.ndarray], keep_float: list[str]) -> None:
    """Two NNCF recipes, each the better one for some networks, so both are made and the one whose
    output is closer to the float network's on the calibration crops is kept:
    - SmoothQuant on the convolutions (alpha 0.25: per-channel activation spread moved into the
      per-channel weights), min-max activation ranges and NNCF's fast bias correction. vdsr x2 on
      the probe set: 0.012 dB from fp32 (NNCF's defaults: 0.085; the mean-of-maxima ranges clip
      the large activations at edges, min-max keeps them); with full bias correction 0.028.
    - min-max ranges and full bias correction (layer by layer on the quantized predecessors).
      espcn-x3: 0.06 dB from fp32, where the fast correction's shifts moved it by 0.73 dB."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import (AdvancedQuantizationParameters,
                                                       AdvancedSmoothQuantParameters)
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    float_model = _float_graph(onnx_path)
    names = {op.get_friendly_name() for op in float_model.get_ops()}
    # OpenVINO splits a Conv into "<name>/WithoutBiases" + an Add named <name>
    ignored = nncf.IgnoredScope(names=sorted(n for n in names for k in keep_float
                                             if n == k or n.startswith(k + "/")))
    minmax = RangeEstimatorParametersSet.MINMAX
    recipes = {  # NNCF runs SmoothQuant only for the transformer model type; for a CNN nothing else changes
        "smoothquant": dict(model_type=nncf.ModelType.TRANSFORMER, advanced_parameters=AdvancedQuantizationParameters(
            smooth_quant_alphas=AdvancedSmoothQuantParameters(convolution=0.25, matmul=-1),
            activations_range_estimator_params=minmax)),
        "bias-correction": dict(fast_bias_correction=False, advanced_parameters=AdvancedQuantizationParameters(
            activations_range_estimator_params=minmax)),
    }
    core = ov.Core()
    reference = core.compile_model(float_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    expected = [reference(x)[0] for x in inputs]
    made, errors, failed = {}, {}, []
    for i, (name, recipe) in enumerate(recipes.items(), 1):
        _stage[0] = f"NNCF recipe {name} ({i} of {len(recipes)})"
        try:
            with export.forks_end_quietly():  # NNCF's telemetry: as the converter's
                made[name] = nncf.quantize(_float_graph(onnx_path), nncf.Dataset(inputs),
                                           subset_size=len(inputs), ignored_scope=ignored, **recipe)
        except Exception as exc:  # a recipe NNCF cannot apply to this graph: the other may do
            failed.append(exc)
            continue
        run = core.compile_model(made[name], "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        errors[name] = float(np.mean([np.mean((run(x)[0] - e) ** 2) for x, e in zip(inputs, expected)]))
    if not made:
        raise failed[0]
    best = min(errors, key=errors.get)
    print(f"int8: kept the {best} recipe (mean squared difference from the float network on the "
          "calibration crops: " + ", ".join(f"{n} {e:.3g}" for n, e in errors.items()) + ")", file=sys.stderr)
    ov.save_model(made[best], str(out), compress_to_fp16=False)


def quantize_model(model, *, scale: float, backend: str, calib: str, out: Path, samples: int = 32,
                   size: int = 64, keep_edges: bool = True, source: str,
                   too_small: str = "use smaller --size", untrained: bool = False) -> int:
    """Calibrate `model` at `scale` on `calib` and write the int8 graph to `out` (atomically: a
    temporary folder beside it, renamed into place). Returns the number of calibration crops.
    `untrained`: the model's weights are random (`--allow-untrained`); the file says so, and
    `int8.load_runner` refuses it as the loader refuses the model."""
    inputs = calibration_inputs(model, scale, calib, samples=samples, size=size, too_small=too_small)
    spec = model.upsample_spec
    if source and Path(source).is_file():  # a checkpoint: named so from any folder
        source = str(Path(source).resolve())
    meta = {"arch": spec.arch, "kwargs": spec.kwargs, "name": spec.name or "", "source": source,
            "weights_sha256": state_hash(model),  # which weights: a fine-tune has the shipped model's name
            "float_edges": keep_edges,
            "calibration": {"folder": str(calib), "images": len(inputs), "lr_size": size, "scale": scale},
            **({"untrained": True} if untrained else {})}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".quantize-") as tmp:
        tmp = Path(tmp)
        onnx_path = tmp / "fp32.onnx"
        onnx_path.write_bytes(export.onnx_bytes(model.cpu().eval(), export.example_input(model, False)))
        q = tmp / ("int8" + SUFFIX[backend])
        print(f"int8: calibrating on {len(inputs)} crops of {calib} ({backend})", file=sys.stderr)
        try:
            keep = edge_convs(onnx_path) if keep_edges else []
            quantize = quantize_onnxruntime if backend == Backend.ONNXRUNTIME else quantize_openvino
            with _heartbeat(backend):
                quantize(onnx_path, q, inputs, keep)
        except ImportError as exc:
            raise UserError(f"--backend {backend} needs {exc.name}: pip install "
                            f"{'nncf' if backend == Backend.OPENVINO else 'onnxruntime'}") from None
        write_meta(q, backend, meta)
        # Ctrl-C lands after the renames: with --overwrite, not between the old file's removal
        # and the new one's arrival (the user's file gone, no new one)
        with export.interrupts_deferred():
            if backend == Backend.OPENVINO:  # weights first, the .xml (what loads) last; an old .xml
                out.unlink(missing_ok=True)  # goes first: only a reader already past it can mismatch
                q.with_suffix(".bin").replace(out.with_suffix(".bin"))
            q.replace(out)
    return len(inputs)


def quantize_to_cache(model: nn.Module, scale: float, calib: str, *, samples: int = 32,
                      size: int = 64) -> Path:
    """Make the int8 IR `--backend auto` lets compete (OpenVINO, first and last convolutions
    float) in the cache; its path."""
    key = model_key(model)
    out = cached_path(key, scale)
    quantize_model(model, scale=scale, backend=Backend.OPENVINO, calib=calib, out=out, samples=samples,
                   size=size, keep_edges=True, source=key,
                   # its callers (bench --calib) have no option for the crops' size
                   too_small="give --calib a folder of larger training images")
    drop_image_plans()
    return out


def drop_image_plans() -> None:
    """Forget `upsample image`'s fast-path plans: one made before an int8 network was cached ran
    its fp32 graph without asking the gate again (their stamps do not see the cache's int8)."""
    shutil.rmtree(cache_dir() / "plans", ignore_errors=True)


def copy_to_cache(model: nn.Module, scale: float, path: Path) -> Path:
    """An `upsample quantize --backend openvino` output (float edges) copied to where `--backend
    auto` finds it: it replaces one made before, and the gate measures it (its stamp is new)."""
    out = cached_path(model_key(model), scale)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".int8-") as tmp, export.interrupts_deferred():
        # deferred: the user's file is whole by now; a Ctrl-C here would call it interrupted
        tmp_xml = Path(tmp) / out.name
        shutil.copyfile(path.with_suffix(".bin"), tmp_xml.with_suffix(".bin"))
        shutil.copyfile(path, tmp_xml)
        out.unlink(missing_ok=True)  # an old .xml goes first: only a reader already past it can mismatch
        tmp_xml.with_suffix(".bin").replace(out.with_suffix(".bin"))
        tmp_xml.replace(out)  # the .xml last: its presence says the pair is whole
    drop_image_plans()
    return out
