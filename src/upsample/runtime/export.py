"""ONNX / OpenVINO export (`upsample export`) and the onnxruntime / openvino runtime backends.

The exported file (`export_model`) is the network, float NCHW in [0, 1] (Y or RGB as the model
takes), an RGB model's output clamped to [0, 1] (a Y model's Y is not: `upsample image` clamps
after the conversion back to RGB), with dynamic batch, height and width (TorchScript-based
`torch.onnx.export`, opset 17: it needs no onnxscript). `--uint8-io` wraps it to take and return
uint8 NHWC RGB with the colour path of `upsample image`: normalisation, BT.601 YCbCr for
Y-channel models, MATLAB-exact bicubic (`degrade.BicubicUp`) of the chroma and of VDSR's input,
clamp and rounding, all inside the graph. The file says how to feed it (`io_contract`): ONNX
metadata_props and OpenVINO rt_info under the key `upsample`, one JSON object.
RRDBNet x1/x2 networks need H and W to be multiples of 4/2 (pixel-unshuffle): the exported graph
pads to them itself (`PaddedToMultiple`, mirrored as the Upscaler pads) and crops, so its user
feeds any size; the contract names the multiple (`input_multiple`), to which tiles should align.
The runtime backends' cached graphs (`cached_onnx`) are the bare network: clamping is the
caller's there, as for every `Upscaler`.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import json
import os
import shutil
import signal
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.colour import rgb_to_ycbcr, ycbcr_to_rgb
from ..data.degrade import BicubicUp
from ..errors import UserError
from ..media.cache import entry_lock, has_own_dir, own_dir
from ..media.imageio import atomic_write_bytes, fsync_file
from .cache import cache_dir, intact, ov_compiled, readable_ir, seal

OPSET = 17
GRAPHS = 2  # in every cache key: bump when a model's exported graph changes (2: VapSR's norm)
FORMATS = ("onnx", "openvino")
SUFFIX_OF = {"onnx": ".onnx", "openvino": ".xml"}  # what each format writes (IR: a .bin beside)


def _end_pad_index(n, pad, mirror: torch.Tensor) -> torch.Tensor:
    """Indices 0..n+pad-1 along an axis of n pixels, the last `pad` past its end mirrored (without
    the edge pixel, as F.pad's "reflect") or, where `mirror` is false, the edge repeated; built
    from the input's traced size, so that the exported graph computes it for any H and W."""
    j = torch.arange(n + pad)
    past = torch.where(mirror, 2 * (n - 1) - j, n - 1)
    return torch.where(j < n, j, past)


class PaddedToMultiple(nn.Module):
    """The network with H and W padded up to its pixel-unshuffle's multiple inside the graph and
    the output cropped back, as `Upscaler.run_network` does (mirrored, or repeated where a side
    is too short to mirror): a user of the file feeds any size. A no-op for other networks."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.upsample_spec = net, net.upsample_spec
        self.multiple, self.scale = net.upsample_spec.pad_multiple, net.upsample_spec.scale or 1

    def forward(self, x):
        if self.multiple == 1:
            return self.net(x)
        h, w = x.shape[-2], x.shape[-1]
        ph, pw = -h % self.multiple, -w % self.multiple  # traced: the graph computes them
        mirror = (torch.as_tensor(ph) < h) & (torch.as_tensor(pw) < w)
        x = x.index_select(2, _end_pad_index(h, ph, mirror)).index_select(3, _end_pad_index(w, pw, mirror))
        return self.net(x)[..., :h * self.scale, :w * self.scale]


class FloatGraph(nn.Module):
    """The network as a float file's user gets it: an RGB model's output clamped to [0, 1]; a Y
    model's Y as it comes, since `upsample image` clamps after the conversion back to RGB (a
    clamp of the Y first moved bright pixels of the repo's own sample by up to 50 levels)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.upsample_spec = PaddedToMultiple(net), net.upsample_spec
        self.clamp = net.upsample_spec.input != "y"

    def forward(self, x):
        y = self.net(x)
        return y.clamp(0, 1) if self.clamp else y


class AnySideBicubicUp(BicubicUp):
    """`BicubicUp` whose mirror takes any side, as MATLAB's imresize (and `upsample image`) do:
    the index past each border folds back and forth over the axis (its mirror of a 1-pixel side
    is that pixel), where BicubicUp slices two pixels that a side under 2 lacks."""

    def _mirror(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        n = x.shape[dim]
        j = (torch.arange(n + self.left + self.right) - self.left + 2 * n) % (2 * n)
        return x.index_select(dim, torch.where(j < n, j, 2 * n - 1 - j))


class Uint8RGB(nn.Module):
    """uint8 NHWC RGB -> network -> uint8 NHWC RGB, all inside one exportable graph, computed as
    `ModelUpscaler` and `Tiler` do for `upsample image` (BT.601 YCbCr, MATLAB-exact bicubic of
    the chroma and of VDSR's input, clamp, x255, round half to even)."""

    def __init__(self, net: nn.Module, scale: float):
        super().__init__()
        self.spec, self.scale = net.upsample_spec, float(scale)
        self.net = PaddedToMultiple(net)
        needs_resize = self.spec.input == "y" or self.spec.pre_upsample
        if needs_resize and not self.scale.is_integer():
            raise UserError(f"--uint8-io needs an integer scale for a {self.spec.input.upper()} model "
                            f"(its chroma is resized in the graph), got {scale:g}")
        self.resize = AnySideBicubicUp(int(self.scale)) if needs_resize else None

    def _up(self, x):
        return self.resize(x.float()).to(x.dtype)

    def forward(self, x):
        dtype = next(self.net.parameters()).dtype
        rgb = x.permute(0, 3, 1, 2).float() / 255.0
        ycc = rgb_to_ycbcr(rgb) if self.spec.input == "y" else None
        inp = rgb if ycc is None else ycc[:, :1]
        if self.spec.pre_upsample:
            inp = self._up(inp)
        out = self.net(inp.to(dtype)).float()
        if ycc is not None:
            out = ycbcr_to_rgb(torch.cat([out, self._up(ycc[:, 1:])], 1))
        return (out.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1)


def io_contract(spec, name: str, scale: float | None, *, uint8_io: bool, fp16: bool) -> dict:
    """How to feed the exported file and read its result: written into its metadata."""
    s = scale if scale is not None else spec.scale
    s = int(s) if s is not None and float(s).is_integer() else s  # 2, as the fixed-scale exports write it
    out_hw = f"H*{s:g}, W*{s:g}" if s else "H*scale, W*scale"
    if uint8_io:
        io = {"input": "uint8 NHWC (N, H, W, 3) RGB, 0..255 (sRGB as stored in the image file)",
              "output": f"uint8 NHWC (N, {out_hw}, 3) RGB, clamped and rounded",
              "colour": "inside the graph: BT.601 studio-range YCbCr and MATLAB-exact bicubic chroma"
                        if spec.input == "y" else "RGB throughout"}
    else:
        dtype = "float16" if fp16 else "float32"
        chans = "1, Y" if spec.input == "y" else "3, RGB"
        y_out = ("Y, not clamped: convert it to RGB with the bicubic Cb, Cr, then clamp to [0, 1] "
                 "(as upsample image does; clamping the Y first moves bright and dark pixels)")
        out_range = y_out if spec.input == "y" else "clamped to [0, 1]"
        io = {"input": f"{dtype} NCHW (N, {chans.split(',')[0]}, H, W) {chans.split(', ')[1]} in [0, 1]",
              "output": f"{dtype} NCHW (N, {chans.split(',')[0]}, {out_hw}) {out_range}",
              "colour": ("Y of BT.601 studio-range YCbCr: Y = (16 + 65.481 R + 128.553 G + 24.966 B) "
                         "/ 255 for R, G, B in [0, 1], so Y is in [16/255, 235/255]; upscale Cb, Cr "
                         "by bicubic and convert back" if spec.input == "y" else "RGB")}
        if spec.pre_upsample:
            io["input"] += ", bicubic-upscaled (MATLAB imresize) to the output size first"
            io["output"] = f"{dtype} NCHW (N, 1, H, W): the input's size, {y_out}"
    multiple = spec.pad_multiple
    if multiple > 1:  # RRDBNet x1/x2 pixel-unshuffle: `PaddedToMultiple` pads inside the graph
        io["input"] += (f"; any H and W: the graph pads them to multiples of {multiple} (mirrored) "
                        "and crops its output")
    # a reader (runtime/foreign_onnx.py among them) needs both to feed a pre-upsampled (VDSR) graph
    pre_upsampled = bool(spec.pre_upsample and not uint8_io)
    return {"model": name, "scale": s, "pre_upsampled_input": pre_upsampled, "input_name": "input",
            "output_name": "output", **io, "dynamic": "batch, height and width",
            # the pixel-unshuffle's multiple, padded to in the graph: tiles that start on it give
            # the whole image's result; min_side 1: any side runs (the in-graph bicubic folds its
            # mirror, `AnySideBicubicUp`)
            "input_multiple": multiple, "pads_to_multiple": multiple > 1, "min_side": 1}


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
    return _fixed_channels(f.getvalue(), channel_axis=1 if h == 2 else 3)


def _fixed_channels(data: bytes, channel_axis: int) -> bytes:
    """The graph with its input's channel count written on its output's channel axis, where
    the exporter left that axis unnamed (a Y model's uint8 RGB output, built by a transpose)."""
    import onnx
    graph = onnx.load_from_string(data)
    src = graph.graph.input[0].type.tensor_type.shape.dim[channel_axis]
    dst = graph.graph.output[0].type.tensor_type.shape.dim[channel_axis]
    if dst.HasField("dim_value") or not src.HasField("dim_value"):
        return data
    dst.dim_value = src.dim_value  # image to image: the channels in are the channels out
    return graph.SerializeToString()


CONTRACT_KEY = "upsample"  # the metadata key of `io_contract` (ONNX metadata_props, OpenVINO rt_info)


def with_metadata(data: bytes, contract: dict) -> bytes:
    """ONNX bytes with `contract` as metadata_props: `upsample` (all of it, JSON) and one
    readable `upsample.<field>` entry per field."""
    import onnx
    graph = onnx.load_from_string(data)
    for key, value in [(CONTRACT_KEY, json.dumps(contract)),
                       *((f"{CONTRACT_KEY}.{k}", str(v)) for k, v in contract.items())]:
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    return graph.SerializeToString()


@contextlib.contextmanager
def interrupts_deferred():
    """SIGINT / SIGTERM held back until the block is done: the two renames of an IR pair are not
    split by Ctrl-C. Python's handlers are swapped for ones that note the signal (a signal mask
    would not do: the process's signal goes to any thread that does not mask it, and OpenVINO's
    and onnxruntime's threads do not), and the noted one is handled as before when it ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        if caught and callable(old[caught[0]]):
            old[caught[0]](caught[0], None)  # raises: KeyboardInterrupt, the CLI's Terminated
        elif caught and old[caught[0]] == signal.SIG_DFL:
            os.kill(os.getpid(), caught[0])


_QUIET_FORKS: list[int] = []  # while not empty, a forked child takes the default SIGINT / SIGTERM


def _default_signals_in_child() -> None:
    if _QUIET_FORKS:
        for s in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError, OSError):
                signal.signal(s, signal.SIG_DFL)


os.register_at_fork(after_in_child=_default_signals_in_child)


@contextlib.contextmanager
def forks_end_quietly():
    """A child this process forks meanwhile ends at once and silently on SIGTERM / SIGINT.
    OpenVINO's converter sends its telemetry from a forked child that it ends with SIGTERM when
    the network is slow or absent (a busy machine, a cluster node); the child inherited the CLI's
    handlers and printed a Terminated / KeyboardInterrupt traceback for each conversion (and,
    stuck in its DNS lookup, lived on with a copy of the cache lock held here)."""
    _QUIET_FORKS.append(1)
    try:
        yield
    finally:
        _QUIET_FORKS.pop()


def _save_openvino(onnx_path: Path, xml_path: Path, fp16: bool, contract: dict | None = None) -> None:
    """ONNX file -> OpenVINO IR (.xml + .bin), written in a temp folder then renamed into place;
    `contract` goes into the IR's rt_info under CONTRACT_KEY (JSON)."""
    import openvino as ov
    with forks_end_quietly():
        ov_model = ov.convert_model(str(onnx_path))
    if contract is not None:
        ov_model.set_rt_info(json.dumps(contract), [CONTRACT_KEY])
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{xml_path.stem}.", dir=xml_path.parent))
    try:
        ov.save_model(ov_model, str(tmpdir / "model.xml"), compress_to_fp16=fp16)
        for part in ("model.bin", "model.xml"):  # a power cut leaves no zero-filled graph to load
            fsync_file(tmpdir / part)
        # the old .xml goes first: an interrupt between the renames leaves a lone .bin, which no
        # reader loads, never an old graph over new weights (--overwrite)
        with interrupts_deferred():  # Ctrl-C lands after the pair is whole
            xml_path.unlink(missing_ok=True)
            os.replace(tmpdir / "model.bin", xml_path.with_suffix(".bin"))
            os.replace(tmpdir / "model.xml", xml_path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


# ------------------------------------------------------------------------- the export cache


def model_key(model: nn.Module) -> str:
    """The weights' name in the cache (as `auto` keys its exports and gate results)."""
    return f"{model.upsample_spec.arch}-{weights_hash(model)}"


def weights_hash(model: nn.Module) -> str:
    spec = model.upsample_spec
    inside = [spec.colorspace] if spec.colorspace != "rgb" else []  # rgb keys stay as they were
    h = hashlib.sha256(json.dumps([spec.arch, spec.kwargs, torch.__version__, OPSET, GRAPHS, *inside],
                                  sort_keys=True).encode())
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def cached_onnx(model: nn.Module, key: str | None = None, example: torch.Tensor | None = None, *,
                again: bool = False) -> Path:
    """`model` (the float network, or a wrapper graph named by `key`) as ONNX under the cache
    folder, exported once per weights hash, or again with `again` (a damaged file: its reader
    failed, see `cached_ir` and `sessions.session_runner`)."""
    if key is None:
        key = model_key(model)
    path = cache_dir() / f"{key}.onnx"
    if not again and path.is_file() and intact(path):
        return path
    with building(key):
        if again or not path.is_file() or not intact(path):  # (another run may have made it meanwhile)
            net = model.cpu().eval()
            data = onnx_bytes(net, example if example is not None else example_input(net, False))
            path = _in_cache(path, lambda p: atomic_write_bytes(p, data))
            seal(path)
    return path


def cached_ir(model: nn.Module, key: str | None = None, example: torch.Tensor | None = None) -> Path:
    """The OpenVINO IR (.xml) of `cached_onnx(model, key, example)`, converted once; an IR that
    OpenVINO cannot read whole (truncated, garbage) is made again."""
    if key is None:
        key = model_key(model)
    found = _readable_ir_of(key)
    if found is not None:
        return found
    with building(key):
        return _readable_ir_of(key) or _make_ir(model, key, example)  # another run may have made it


def _readable_ir_of(key: str) -> Path | None:
    for folder in filter(None, (cache_dir(), has_own_dir("export"))):
        if readable_ir(folder / f"{key}.xml"):
            return folder / f"{key}.xml"
    return None


def _make_ir(model: nn.Module, key: str, example: torch.Tensor | None) -> Path:
    def to_ir(onnx_path: Path) -> Path:
        xml = _in_cache(onnx_path.with_suffix(".xml"), lambda p: _save_openvino(onnx_path, p, fp16=False))
        seal(xml, xml.with_suffix(".bin"))
        return xml
    try:
        return to_ir(cached_onnx(model, key, example))
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001 - OpenVINO's converter raises its own kinds: a damaged ONNX
        # file, or one removed by `upsample cache clear` in another process: once more, exported again
        return to_ir(cached_onnx(model, key, example, again=True))


_BUILDING = threading.RLock()  # this process's threads build one export at a time
_HELD: set[str] = set()  # the keys whose lock this process holds (cached_ir -> cached_onnx)
_SAID: list[str] = []  # the waiting note said


@contextlib.contextmanager
def building(key: str):
    """Hold the lock of the cache entry `key` (.KEY.lock in the cache folder) while it is checked
    and made: runs started together (a job array, GNU parallel) export and gate a model once, the
    others wait and find it made. Reentrant in this process. Under the lock, temporary files of
    `key` are a killed writer's (kill -9, a power cut): they are removed (only where the file
    system has locks). Where the cache folder cannot be written there is no lock (each run makes its own copy, see `_in_cache`)."""
    with _BUILDING:
        if key in _HELD:
            yield
            return
        folder = cache_dir()
        with contextlib.ExitStack() as stack:
            try:
                lock = stack.enter_context(entry_lock(folder / f".{key}.lock", None if _SAID else
                                                      f"another run is preparing this model in {folder}; waiting for it"))
            except OSError:
                pass  # an unwritable cache: no lock to share
            else:
                if lock.said:
                    _SAID.append(key)  # one note a run, not one per graph
                if lock.held:  # (without locks a live run's temporaries look the same)
                    _remove_dead_temporaries(folder, key)
            _HELD.add(key)
            try:
                yield
            finally:
                _HELD.discard(key)


def _remove_dead_temporaries(folder: Path, key: str) -> None:
    """The temporary files of `key` a killed writer left: ONNX `.KEY.onnx.XXXX.part` files
    (`atomic_write_bytes`) and IR `.KEY.XXXX` folders (`_save_openvino`)."""
    for leftover in folder.glob(f".{glob.escape(key)}.*"):  # (not .KEY.lock, the lock held)
        with contextlib.suppress(OSError):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover)
            elif leftover.name.endswith(".part"):
                leftover.unlink()


def _in_cache(path: Path, write) -> Path:
    """`write(path)`, or where the cache folder cannot be written (read-only, a full disk, a file
    where a folder should be) `write` to the same name in a temporary folder of this process,
    removed when it exits (one per process: a batch over a read-only cache does not fill /tmp)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
        return path
    except OSError:
        if path.parent == has_own_dir("export"):
            raise
    path = own_dir("export") / path.name
    write(path)
    return path


# ------------------------------------------------------------------ `upsample export`'s files


def export_model(model: nn.Module, fmt: str, out: Path, *, fp16: bool = False, uint8_io: bool = False,
                 scale: float | None = None, name: str | None = None, untrained: bool = False) -> float:
    """Write `model` as ONNX or OpenVINO IR, its I/O contract in the metadata; returns the max
    abs difference of the exported graph from PyTorch (fp32) on a random image (uint8 levels
    with uint8_io). `untrained`: random weights (`--allow-untrained`); the contract says so
    (checkpoint.marked_untrained reads it), as `quantize` marks its int8 files."""
    model = model.cpu().eval()
    ref_module = Uint8RGB(model, scale) if uint8_io else FloatGraph(model)
    example = example_input(model, uint8_io, size=32)
    with torch.no_grad():
        ref = ref_module(example)
    net = model
    if fp16:
        import copy
        net = copy.deepcopy(model).half()
        net.upsample_spec = model.upsample_spec
    module = Uint8RGB(net, scale) if uint8_io else FloatGraph(net)
    trace_in = example if uint8_io else example.to(next(net.parameters()).dtype)
    contract = io_contract(model.upsample_spec, name or model.upsample_spec.name or "checkpoint", scale,
                           uint8_io=uint8_io, fp16=fp16)
    if untrained:
        contract["untrained"] = True
    data = with_metadata(onnx_bytes(module, trace_in), contract)
    feed = example.numpy() if uint8_io else trace_in.numpy()
    if fmt == "onnx":
        atomic_write_bytes(out, data)
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.log_severity_level = 4  # fatal only, as the runtime sessions: errors come back as exceptions
        session = ort.InferenceSession(str(out), opts, providers=["CPUExecutionProvider"])
        got = session.run(None, {"input": feed})[0]
    else:
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = Path(tmp) / "model.onnx"
            onnx_path.write_bytes(data)
            _save_openvino(onnx_path, out, fp16=fp16, contract=contract)
        got = np.asarray(ov_compiled(out)(feed)[0])
    diff = np.abs(got.astype(np.float64) - ref.numpy().astype(np.float64))
    return float(diff.max())


def default_output(name: str, spec, scale: float | None, fmt: str, *, fp16: bool, uint8_io: bool) -> Path:
    """model[-xS][-fp16][-uint8].onnx|.xml named after the model: a registered one's in the
    current folder, a checkpoint's beside it (a run's best.safetensors -> best.onnx in the run)."""
    source = Path(name)
    stem = source.stem if source.suffix else name
    tags = ("-fp16" if fp16 else "") + ("-uint8" if uint8_io else "")
    at_scale = f"-x{scale:g}" if spec.scale is None and scale else ""
    folder = source.parent if source.suffix else Path()
    return folder / f"{stem}{at_scale}{tags}{SUFFIX_OF[fmt]}"


def file_size(path: Path) -> int:
    return path.stat().st_size + (path.with_suffix(".bin").stat().st_size if path.suffix == ".xml" else 0)

