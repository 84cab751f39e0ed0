"""Other projects' ONNX models (`--model file.onnx`): read the graph's I/O, probe its scale, run it.

An image-to-image graph has one input and one output, each rank 4 with 1 (Y) or 3 (RGB) channels,
NCHW (or NHWC, told by where the channels are). The element type says how pixels are coded:
uint8 is 0-255 (catid's export: uint8 RGB in, uint8 out), float / float16 is [0, 1]. The scale
is the output size over the input size on a probe run; the runner then maps our float NCHW
[0, 1] tensors to the graph's coding and back, so the graph is one more `Runner`.
A graph of any other form is refused with one line (UserError) saying what it has.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..models.registry import ModelSpec
from .cache import ov_compiled, per_thread
from .int8 import META_KEY
from .kinds import Backend
from .runner import Runner
from .sessions import ort_session

ARCH = "onnx"  # the spec's architecture: a graph with no torch module behind it
PROBE_SIDE = 24  # probe input side where the graph's height and width are dynamic
_TYPES = {1: np.float32, 10: np.float16, 2: np.uint8}  # ONNX TensorProto element types
_SHAPE_HINT = ("`--model FILE.onnx` takes an image-to-image graph: one input and one output, "
               "N x C x H x W (or N x H x W x C), C 1 or 3, uint8 or float")


@dataclass(frozen=True)
class Port:
    """One side of the graph: its tensor name, pixel type, layout and fixed sizes (None: dynamic)."""
    name: str
    dtype: type
    channels_last: bool
    channels: int
    batch: int | None
    size: tuple[int | None, int | None]

    def describe(self) -> str:
        dims = ["N" if self.batch is None else str(self.batch), str(self.channels),
                *("?" if d is None else str(d) for d in self.size)]
        if self.channels_last:
            dims = [dims[0], dims[2], dims[3], dims[1]]
        return f"{np.dtype(self.dtype).name} {' x '.join(dims)}"


def _port(value_info, path: Path, side: str, like: Port | None = None) -> Port:
    """The Port of a graph input/output, or UserError when it cannot carry an image. An output
    whose channel axis the graph leaves unnamed (dynamic) takes the input's layout (`like`);
    the probe run checks it."""
    from onnx import TensorProto
    t = value_info.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    if t.elem_type not in _TYPES or len(dims) != 4:
        kind = TensorProto.DataType.Name(t.elem_type).lower() if t.elem_type else "no tensor"
        raise UserError(f"{path}: its {side} {value_info.name!r} is not an image tensor ({kind} of "
                        f"rank {len(dims)}); {_SHAPE_HINT}")
    if dims[1] in (1, 3):
        channels_last, channels, size = False, dims[1], (dims[2], dims[3])
    elif dims[3] in (1, 3):
        channels_last, channels, size = True, dims[3], (dims[1], dims[2])
    elif like is not None and dims[3 if like.channels_last else 1] is None:
        channels_last, channels = like.channels_last, like.channels
        size = (dims[1], dims[2]) if channels_last else (dims[2], dims[3])
    else:
        raise UserError(f"{path}: its {side} {value_info.name!r} has shape {dims}, with no axis of "
                        f"1 or 3 channels; {_SHAPE_HINT}")
    return Port(value_info.name, _TYPES[t.elem_type], channels_last, channels, dims[0], size)


def read_ports(path: Path) -> tuple[Port, Port]:
    """(input, output) of an ONNX graph that maps an image to an image."""
    import onnx
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:  # protobuf decode errors of several types
        raise UserError(f"{path}: not a readable ONNX model ({str(exc).splitlines()[0]})") from None
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise UserError(f"{path} has {len(inputs)} inputs and {len(graph.output)} outputs; {_SHAPE_HINT}")
    src = _port(inputs[0], path, "input")
    dst = _port(graph.output[0], path, "output", like=src)
    if src.channels != dst.channels:
        raise UserError(f"{path} maps {src.channels} channels to {dst.channels}; {_SHAPE_HINT}")
    return src, dst


def export_contract(path: Path) -> dict:
    """The I/O contract `upsample export` wrote into the file's metadata ({} for other graphs)."""
    import onnx
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    try:
        return json.loads(props.get(META_KEY) or "{}")
    except ValueError:
        return {}


def is_foreign(path: Path) -> bool:
    """An existing .onnx file that is not an int8 model of `upsample quantize` (whose metadata
    names the architecture): another project's graph, or an `upsample export` (whose metadata
    holds only its I/O contract), both run as graphs."""
    if path.suffix.lower() != ".onnx" or not path.is_file():
        return False
    import onnx
    try:
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        return "arch" not in json.loads(props.get(META_KEY) or "{}")
    except Exception:  # unreadable or odd metadata: read_ports says what is wrong in one line
        return True


def _encode(x: torch.Tensor, port: Port) -> np.ndarray:
    """Our float NCHW [0, 1] as the graph's input coding."""
    if port.channels_last:
        x = x.permute(0, 2, 3, 1)
    x = x.detach().cpu().float()
    if port.dtype is np.uint8:
        return torch.round(x.clamp(0, 1) * 255).to(torch.uint8).numpy()
    return np.ascontiguousarray(x.numpy().astype(port.dtype))


def _decode(y: np.ndarray, port: Port) -> torch.Tensor:
    """The graph's output as our float NCHW [0, 1] (unclamped for float graphs)."""
    t = torch.from_numpy(np.asarray(y).astype(np.float32))
    if port.dtype is np.uint8:
        t = t / 255.0
    return t.permute(0, 3, 1, 2).contiguous() if port.channels_last else t


def _session(path: Path, backend: Backend, device: torch.device, threads: int | None,
             ov_device: str = "CPU", ov_precision: str | None = "f32"):
    """A function numpy input -> numpy output on onnxruntime (also for auto) or openvino (on
    `ov_device`, in `ov_precision`: None, a GPU's or NPU's own)."""
    if backend == Backend.TORCH:
        raise UserError(f"{path} is an ONNX graph, which the torch backend cannot run: use "
                        "--backend onnxruntime, openvino or auto")
    if backend == Backend.OPENVINO:
        try:  # f32 asked for on the CPU: on CPUs with bf16 units OpenVINO would otherwise pick bf16
            compiled = per_thread(ov_compiled(path, ov_precision, threads, ov_device))
        except RuntimeError as exc:  # OpenVINO's error for a graph it cannot read or compile
            raise UserError(f"{path}: OpenVINO cannot compile it ({str(exc).splitlines()[0]})") from None
        return lambda a: np.asarray(compiled(a))
    try:
        sess = ort_session(str(path), device, threads)
    except UserError:
        raise
    except Exception as exc:  # onnxruntime's own error types for graphs it cannot take
        raise UserError(f"{path}: onnxruntime cannot load it ({str(exc).splitlines()[0]})") from None
    name = sess.get_inputs()[0].name

    def run(a):
        try:
            return sess.run(None, {name: a})[0]
        except Exception as exc:  # onnxruntime's own error types: a size the graph cannot take
            raise UserError(f"{path} cannot run an input of shape {tuple(a.shape)} "
                            f"({str(exc).splitlines()[0][:160]})") from None
    return run


def _runner_fn(path: Path, run, src: Port, dst: Port):
    """float NCHW [0, 1] -> float NCHW [0, 1] through the graph; one image at a time where its
    batch is fixed at 1; a fixed input size refuses other sizes with one line."""
    def run_net(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if any(f is not None and f != d for f, d in zip(src.size, (h, w))):
            raise UserError(f"{path} takes only {src.size[0]}x{src.size[1]} inputs (its size is fixed), "
                            f"got {h}x{w}; export it with dynamic height and width")
        parts = x.split(1) if src.batch == 1 else (x,)
        return torch.cat([_decode(run(_encode(p, src)), dst) for p in parts]).to(x.device)
    return run_net


def probe_scale(path: Path, run, src: Port, dst: Port, multiple: int = 1) -> int:
    """The graph's integer scale from one run on a probe of the input's fixed or a small size
    (a multiple of `multiple`)."""
    h, w = (d or -(-PROBE_SIDE // multiple) * multiple for d in src.size)
    probe = torch.rand(1, src.channels, h, w, generator=torch.Generator().manual_seed(0))
    try:
        out = _runner_fn(path, run, src, dst)(probe)
    except UserError:
        raise
    except Exception as exc:  # the runtime's error for a graph that fails on an image input
        raise UserError(f"{path}: a {h}x{w} probe image fails in it ({str(exc).splitlines()[0]}); "
                        f"{_SHAPE_HINT}") from None
    oh, ow = out.shape[-2:]
    if out.shape[1] != src.channels or oh % h or ow % w or oh // h != ow // w or oh < h:
        raise UserError(f"{path} turned a {h}x{w} probe into {tuple(out.shape)}: not an upscaling by "
                        f"one integer factor; {_SHAPE_HINT}")
    return oh // h


def foreign_runner(path: Path, backend: Backend, device: torch.device, threads: int | None = None, *,
                   ov_device: str = "CPU", ov_precision: str | None = "f32") -> tuple[Runner, str]:
    """(a runner, its display name) for an image-to-image ONNX graph from another project
    (OpenVINO on `ov_device` in `ov_precision`, see `_session`)."""
    src, dst = read_ports(path)
    run = _session(path, backend, device, threads, ov_device, ov_precision)
    contract = export_contract(path)
    if contract.get("pre_upsampled_input"):  # our VDSR export: its input is already at output size
        spec = ModelSpec(name=None, arch=ARCH, scale=contract["scale"], pre_upsample=True,
                         input="y" if src.channels == 1 else "rgb")
    else:
        multiple = contract.get("input_multiple", 1)  # our RRDBNet x1/x2 exports: 4 / 2
        multiple = multiple if isinstance(multiple, int) and multiple > 0 else 1
        spec = ModelSpec(name=None, arch=ARCH, scale=probe_scale(path, run, src, dst, multiple),
                         input="y" if src.channels == 1 else "rgb", input_multiple=multiple,
                         fixed_size=tuple(src.size) if any(src.size) else None)
    runtime = str(Backend.OPENVINO if backend == Backend.OPENVINO else Backend.ONNXRUNTIME)
    if runtime == Backend.OPENVINO and ov_device != "CPU":
        runtime += f" {ov_device}"
    runner = Runner(run=_runner_fn(path, run, src, dst), spec=spec,
                    runtime=f"{runtime}, {src.describe()} -> {dst.describe()}")
    return runner, path.name
