"""Other projects' ONNX models (`--model file.onnx`): read the graph's I/O, probe its scale, run it.

An image-to-image graph has one input and one output, each rank 4 with 1 (Y) or 3 (RGB) channels,
NCHW (or NHWC, told by where the channels are). The element type says how pixels are coded:
uint8 is 0-255 (catid's export: uint8 RGB in, uint8 out), float / float16 is [0, 1]. The scale
is the output size over the input size on a probe run; the runner then maps our float NCHW
[0, 1] tensors to the graph's coding and back, so the graph is one more `Runner`.
A graph of any other form is refused with one line (UserError) saying what it has.

Other projects' files carry none of our metadata, so what the graph needs is found by running it:
the multiple of its input sides (a pixel-unshuffle, as Real-ESRGAN x2plus/x1's, takes only even
or 4k sides) by probes of sides m x odd, and an output's layout the file leaves unannotated from
the probe's output. A graph of one fixed input size (Real-ESRGAN's pytorch2onnx.py: 1x3x64x64)
runs any image in overlapping windows of exactly that size (`in_windows`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from ..errors import UserError
from ..models.registry import ModelSpec
from .cache import per_thread
from .int8 import META_KEY
from .kinds import Backend
from .runner import Runner
from .sessions import ort_reason, ort_session, ov_compiled_said

ARCH = "onnx"  # the spec's architecture: a graph with no torch module behind it
PROBE_SIDE = 24  # probe input side where the graph's height and width are dynamic
PROBE_MULTIPLES = (1, 2, 4, 8)  # input multiples tried on a graph whose file does not say its own
# Input pixels of context around the part of a fixed-size graph's window that is kept: the tile
# pad's default cap (inference.sizes.MAX_DEFAULT_PAD, a layer above), at most a quarter of the
# window's side, so that at least half of each side is kept (`_axis_windows`).
WINDOW_CONTEXT = 32
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
    whose channel axis the graph leaves unnamed (dynamic), or that has no shape annotation at
    all (tools that strip value_info), takes the input's layout (`like`); the probe run checks it."""
    from onnx import TensorProto
    t = value_info.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    if like is not None and t.elem_type in _TYPES and not t.HasField("shape"):
        dims = [None] * 4  # rank unknown until it runs: the probe checks rank 4 (`_rank4`)
    if t.elem_type not in _TYPES or len(dims) != 4:
        kind = TensorProto.DataType.Name(t.elem_type).lower() if t.elem_type else "no tensor"
        rank = f"of rank {len(dims)}" if t.HasField("shape") else "with no shape given"
        raise UserError(f"{path}: its {side} {value_info.name!r} is not an image tensor ({kind} "
                        f"{rank}); {_SHAPE_HINT}")
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


def _other_format(path: Path) -> str | None:
    """What a file named .onnx is instead, by its first bytes (as models/checkpoint.py tells its
    formats by content), with what to do; None for anything else. An empty file parsed as an
    ONNX model of no graph ("0 inputs and 0 outputs"), the others as "Wire format was corrupt"."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc}): check the file's owner and mode"
    if not head:
        return "is empty (0 bytes): an interrupted download or copy; get the file again"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch.save's zip archive / legacy pickle
        import zipfile
        try:
            with zipfile.ZipFile(path) as z:
                torch_zip = any(n.endswith("data.pkl") for n in z.namelist())
        except (zipfile.BadZipFile, OSError, ValueError, EOFError):
            torch_zip = head[:1] == b"\x80"
        if not torch_zip:
            return "is a zip archive, not an ONNX model: unpack it and give the .onnx inside"
        return (f"is a PyTorch checkpoint (torch.save), not an ONNX model: name it {path.stem}.pth and "
                "give that (`--model` reads checkpoints by their content)")
    if len(head) > 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") < 100_000_000:
        return f"is a safetensors checkpoint, not an ONNX model: name it {path.stem}.safetensors and give that"
    if head.startswith(b"version https://git-lfs"):
        return "is a Git LFS pointer, not the model itself: fetch it (`git lfs pull`)"
    if head.lstrip()[:1] == b"<":
        return "is a text (HTML or XML) file, not an ONNX model: a web page saved in its place? get the file again"
    return None


def read_ports(path: Path) -> tuple[Port, Port]:
    """(input, output) of an ONNX graph that maps an image to an image."""
    import onnx
    if (other := _other_format(path)) is not None:
        raise UserError(f"{path} {other}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # protobuf decode errors of several types ("Wire format was corrupt")
        raise UserError(f"{path}: not a readable ONNX model (it does not decode as one): a damaged "
                        "file, or another format named .onnx") from None
    graph = model.graph
    if not (graph.node or graph.input or graph.output):  # bytes that happen to decode, to nothing
        raise UserError(f"{path}: not a readable ONNX model (it holds no graph): a damaged file, or "
                        "another format named .onnx")
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


def export_marked_untrained(path: Path) -> bool:
    """An `upsample export --allow-untrained` graph: its contract says its weights are random
    (False for any other graph, or a file that cannot be read: running it says why)."""
    try:
        return bool(export_contract(path).get("untrained"))
    except Exception:  # noqa: BLE001 - onnx's parse errors have no common type
        return False


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
    if backend == Backend.OPENVINO:  # f32 asked for on the CPU: with bf16 units OpenVINO would pick bf16
        compiled = per_thread(ov_compiled_said(path, ov_precision, threads, ov_device))
        return lambda a: np.asarray(compiled(a))
    try:
        sess = ort_session(str(path), device, threads)
    except UserError:
        raise
    except Exception as exc:  # onnxruntime's own error types for graphs it cannot take
        raise UserError(f"{path}: onnxruntime cannot load it ({ort_reason(exc, _opset(path))})") from None
    name = sess.get_inputs()[0].name

    def run(a):
        try:
            return sess.run(None, {name: a})[0]
        except Exception as exc:  # onnxruntime's own error types: a size the graph cannot take
            raise UserError(f"{path} cannot run an input of shape {tuple(a.shape)} "
                            f"({ort_reason(exc)[:160]})") from None
    return run


def _opset(path: Path) -> int | None:
    """The graph's default-domain opset, for onnxruntime's refusals (None where unreadable)."""
    import onnx
    try:
        imports = onnx.load(str(path), load_external_data=False).opset_import
    except Exception:  # noqa: BLE001 - read_ports read it; this only adds to a message
        return None
    return next((o.version for o in imports if o.domain in ("", "ai.onnx")), None)


def _axis_windows(n: int, side: int | None, context: int, multiple: int = 1) -> list[tuple[int, int, int]]:
    """(start, keep_from, keep_to) of the windows of `side` pixels along an axis of n >= side
    pixels (one window of all n where the axis is dynamic): windows `context` apart from their
    neighbours' kept parts, the last one shifted inward to end at n; each keeps up to the middle
    of its overlaps, so every kept pixel has at least `context` pixels of real image around it
    in its window (or the image's edge, as an untiled run has). Starts are multiples of
    `multiple` where n and side are (a graph that pixel-unshuffles by it)."""
    if side is None or n <= side:
        return [(0, 0, n)]
    context = min(context, side // 4)
    step = max(multiple, (side - 2 * context) // multiple * multiple)
    starts = [*range(0, n - side, step), n - side]
    cuts = [0, *((a + b + side) // 2 for a, b in zip(starts, starts[1:])), n]
    return [(s, cuts[i], cuts[i + 1]) for i, s in enumerate(starts)]


def in_windows(run, x: torch.Tensor, size: tuple[int | None, int | None],
               context: int = WINDOW_CONTEXT, multiple: int = 1) -> torch.Tensor:
    """`run` (a graph of one input size: `size`, None for a dynamic axis) on an NCHW image of any
    size, in overlapping windows of exactly that size whose kept parts tile the output seamlessly
    (`_axis_windows`). An image smaller than the size is padded up to it (mirrored, as
    Real-ESRGAN pads; replicated where too small to mirror) and the output cropped back."""
    h, w = x.shape[-2:]
    ph, pw = (max(0, f - n) if f else 0 for f, n in zip(size, (h, w)))
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="reflect" if ph < h and pw < w else "replicate")
    wh, ww = (f or n for f, n in zip(size, x.shape[-2:]))
    out, s = None, 1
    for y0, ky0, ky1 in _axis_windows(x.shape[-2], size[0], context, multiple):
        for x0, kx0, kx1 in _axis_windows(x.shape[-1], size[1], context, multiple):
            y = run(x[..., y0:y0 + wh, x0:x0 + ww])
            if out is None:
                s = y.shape[-1] // ww
                if s < 1 or tuple(y.shape[-2:]) != (wh * s, ww * s):  # as `probe_scale` refuses it
                    raise UserError(f"the graph turned a {wh}x{ww} input into {tuple(y.shape)}: not an "
                                    f"upscaling by one integer factor; {_SHAPE_HINT}")
                out = y.new_empty((*y.shape[:2], x.shape[-2] * s, x.shape[-1] * s))
            out[..., ky0 * s:ky1 * s, kx0 * s:kx1 * s] = \
                y[..., (ky0 - y0) * s:(ky1 - y0) * s, (kx0 - x0) * s:(kx1 - x0) * s]
    return out[..., :h * s, :w * s]


def _runner_fn(path: Path, run, src: Port, dst: Port, multiple: int = 1):
    """float NCHW [0, 1] -> float NCHW [0, 1] through the graph; one image at a time where its
    batch is fixed at 1; in windows of its size where that is fixed (`in_windows`), starting on
    multiples of `multiple`."""
    def run_graph(x: torch.Tensor) -> torch.Tensor:
        parts = x.split(1) if src.batch == 1 else (x,)
        return torch.cat([_decode(_rank4(path, run(_encode(p, src))), dst) for p in parts]).to(x.device)
    if not any(src.size):
        return run_graph
    return lambda x: in_windows(run_graph, x, src.size, multiple=multiple)


def _rank4(path: Path, y):
    """The graph's output, or UserError where it is no image (an output the file left unannotated)."""
    if np.ndim(y) != 4:
        raise UserError(f"{path}: its output has shape {tuple(np.shape(y))}, not an image; {_SHAPE_HINT}")
    return y


def _probe_side(multiple: int) -> int:
    """About PROBE_SIDE, `multiple` times an odd number: a graph that runs it needs no larger multiple."""
    return multiple * (PROBE_SIDE // multiple | 1)


def probe_scale(path: Path, run_net, src: Port, multiple: int | None = None) -> tuple[int, int]:
    """(the graph's integer scale, the multiple its input sides must be) from runs of `run_net`
    on probes of the input's fixed or a small size: a multiple of `multiple` where the file says
    it, else of the first of PROBE_MULTIPLES that the graph runs and upscales."""
    if multiple is None:
        multiples = PROBE_MULTIPLES if None in src.size else (1,)
    else:
        multiples = (multiple,)
    failed = wrong = None
    for m in multiples:
        h, w = (d or _probe_side(m) for d in src.size)
        probe = torch.rand(1, src.channels, h, w, generator=torch.Generator().manual_seed(0))
        try:
            out = run_net(probe)
        except Exception as exc:  # the runtime's error for a size (or a graph) it cannot run
            failed = failed or (str(exc) if isinstance(exc, UserError) else f"{path}: a {h}x{w} probe "
                                f"image fails in it ({str(exc).splitlines()[0]}); {_SHAPE_HINT}")
            continue
        oh, ow = out.shape[-2:]
        if out.shape[1] == src.channels and not (oh % h or ow % w) and oh // h == ow // w >= 1:
            return oh // h, m
        wrong = wrong or f"turned a {h}x{w} probe into {tuple(out.shape)}: not an upscaling by one integer factor"
    raise UserError(f"{path} {wrong}; {_SHAPE_HINT}" if wrong else failed)


def shift_multiple(run_net, src: Port, scale: int) -> int:
    """The multiple a graph of one fixed input size needs its inputs to start on, where no other
    size can be probed: the least of PROBE_MULTIPLES by which shifting the window shifts the
    middle of the output alike. A pixel-unshuffle by m (Real-ESRGAN x2plus exported at 64x64)
    gives another picture for a window shifted by less than m, so windows placed at any offset
    would cut its pixel pairs differently from window to window."""
    h, w = src.size
    shift = max(PROBE_MULTIPLES)
    if min(h, w) < 4 * shift:
        return 1  # too small a window to compare middles
    g = torch.Generator().manual_seed(0)
    # smooth content: the middle of a deep network's window depends little on its border
    big = F.interpolate(torch.rand(1, src.channels, (h + shift) // 4 + 2, (w + shift) // 4 + 2, generator=g),
                        size=(h + shift, w + shift), mode="bilinear", align_corners=False)
    base = run_net(big[..., :h, :w])
    cy, cx = h // 4, w // 4  # compared: the middle half, away from each window's border
    errors = {}
    for m in PROBE_MULTIPLES:
        moved = run_net(big[..., m:m + h, m:m + w])
        want = base[..., (cy + m) * scale:(h - cy) * scale, (cx + m) * scale:(w - cx) * scale]
        got = moved[..., cy * scale:(h - cy - m) * scale, cx * scale:(w - cx - m) * scale]
        errors[m] = (got - want).abs().mean().item()
    least = min(errors.values())
    return next(m for m in PROBE_MULTIPLES if errors[m] <= 2 * least + 1e-4)


def foreign_runner(path: Path, backend: Backend, device: torch.device, threads: int | None = None, *,
                   ov_device: str = "CPU", ov_precision: str | None = "f32") -> tuple[Runner, str]:
    """(a runner, its display name) for an image-to-image ONNX graph from another project
    (OpenVINO on `ov_device` in `ov_precision`, see `_session`)."""
    src, dst = read_ports(path)
    run = _session(path, backend, device, threads, ov_device, ov_precision)
    run_net = _runner_fn(path, run, src, dst)
    contract = export_contract(path)
    if contract.get("pre_upsampled_input"):  # our VDSR export: its input is already at output size
        spec = ModelSpec(name=None, arch=ARCH, scale=contract["scale"], pre_upsample=True,
                         input="y" if src.channels == 1 else "rgb")
    else:
        multiple = contract.get("input_multiple")  # our RRDBNet x1/x2 exports: 4 / 2; else probed
        multiple = multiple if isinstance(multiple, int) and multiple > 0 else None
        given = multiple
        scale, multiple = probe_scale(path, run_net, src, multiple)
        if given is None and None not in src.size:  # one size only: its multiple from shifts
            multiple = shift_multiple(run_net, src, scale)
            run_net = _runner_fn(path, run, src, dst, multiple)
        # fixed_size: the graph's own input size, which the runner's windows give it (any image runs)
        spec = ModelSpec(name=None, arch=ARCH, scale=scale, input="y" if src.channels == 1 else "rgb",
                         input_multiple=multiple, fixed_size=tuple(src.size) if any(src.size) else None)
    runtime = str(Backend.OPENVINO if backend == Backend.OPENVINO else Backend.ONNXRUNTIME)
    if runtime == Backend.OPENVINO and ov_device != "CPU":
        runtime += f" {ov_device}"
    runner = Runner(run=run_net, spec=spec, runtime=f"{runtime}, {src.describe()} -> {dst.describe()}",
                    eight_bit=np.uint8 in (src.dtype, dst.dtype))
    return runner, path.name
