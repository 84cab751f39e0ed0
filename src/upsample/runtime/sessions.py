"""ONNX Runtime and OpenVINO sessions over exported graphs, as callables on float NCHW tensors.

The graph files come from `export` (cached by weights hash) or from `upsample quantize`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from .cache import cache_dir, file_vanished, openvino_devices, ov_compiled, per_thread
from .export import cached_ir, cached_onnx
from .kinds import Backend
from .runner import Runner


def ort_session(source, device: torch.device, threads: int | None = None):
    import onnxruntime as ort
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise UserError("onnxruntime here has no CUDA provider: use --device cpu or --backend torch")
        providers = [("CUDAExecutionProvider", {"device_id": device.index or 0})] + providers
    opts = ort.SessionOptions()
    # fatal only: a run's error comes back as the exception, which the callers turn into their
    # one line; at ERROR onnxruntime also printed it, coloured, on stderr (a probe of a size
    # the graph cannot take, `foreign_onnx.probe_scale`, is such an error, and expected)
    opts.log_severity_level = 4
    if threads:
        opts.intra_op_num_threads = int(threads)
    return ort.InferenceSession(source, opts, providers=providers)


# onnxruntime's text around its reason: "[ONNXRuntimeError] : 1 : FAIL : Load model from F failed:",
# and the C++ source place, "/onnxruntime_src/.../model.cc:256 onnxruntime::Model::Model(...) "
_ORT_PREFIX = re.compile(r"\[ONNXRuntimeError\] : \d+ : \w+ : |Load model from .*? failed:\s*")
_ORT_SOURCE = re.compile(r"(?:/onnxruntime_src/)?[\w/.]+\.(?:cc|h|cpp):\d+ ")


def _without_signature(text: str) -> str:
    """`text` less a C++ function signature at its start ("void a::b(const x&, int) "), told by
    its balanced parentheses; a plain function name ("GetExtDataFromTensorProto ") goes too."""
    head = re.match(r"(?:[\w:<>,&*]+ )*?[\w:<>]*::~?\w+\(", text)  # [type ]a::b::f(
    if head is None:  # tensorprotoutils' bare "FunctionName Reason"
        return re.sub(r"^[A-Z][a-z]+[A-Z]\w* (?=[A-Z])", "", text)
    depth = 0
    for i in range(head.end() - 1, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return re.sub(r"^\s*const\b", "", text[i + 1:]).strip()
    return text


def ort_reason(exc: BaseException, opset: int | None = None) -> str:
    """onnxruntime's error as what matters, for a one-line message: an opset or IR version
    newer than it takes, an external data file missing or short, else its text without its
    error codes and C++ source places (a 790-character line before). `opset`: the graph's."""
    text = " ".join(str(exc).split())
    if m := re.search(r"Opset (\d+) is under development.*?ai\.onnx is till opset (\d+)", text):
        return (f"opset {m[1]} is newer than this onnxruntime supports (max {m[2]}); "
                f"re-export with opset <= {m[2]}")
    if m := re.search(r"Unsupported model IR version: (\d+), max supported IR version: (\d+)", text):
        return (f"ONNX IR version {m[1]} is newer than this onnxruntime reads (max {m[2]}); re-export it "
                "with an older onnx package, or upgrade onnxruntime")
    if m := re.search(r'External data path does not exist: "?([^"]+)"?', text):
        return f"its external data file {m[1]} is missing: keep it beside the .onnx file"
    if m := re.search(r"External initializer: (\S+) offset: (\d+) size to read: (\d+) given file_length: (\d+)",
                      text):
        return (f"its external data file is cut short ({m[4]} bytes; tensor {m[1]} needs bytes "
                f"{m[2]} to {int(m[2]) + int(m[3])}): copy it again whole")
    if m := re.search(r'In Node, \("([^"]*)", (\w+),.*?, Error (.*)', text):
        under = f" under the graph's opset {opset}" if opset is not None else ""
        old = "; onnxruntime takes opset 7 and later: re-export with a newer opset" if opset and opset < 7 else ""
        return f"node {m[1]!r} ({m[2]}) is invalid{under}: {m[3]}{old}"
    text = _ORT_PREFIX.sub("", text)
    while m := _ORT_SOURCE.search(text):
        text = text[:m.start()] + _without_signature(text[m.end():])
    return text.strip()[:240]


def ov_reason(exc: BaseException, path: Path) -> str:
    """OpenVINO's error on reading the IR or ONNX file `path`, as one readable sentence: its
    .bin missing or short, its XML cut short, else OpenVINO's reason without the "Exception
    from src/...cpp:84" and "Check '...' failed at ..." lines around it."""
    lines = [line.strip() for line in str(exc).replace("\\n", "\n").splitlines()]
    lines = [re.sub(r"^Check '.*' failed at \S+:\d+:\s*", "", line) for line in lines
             if line and not line.startswith("Exception from ")]
    text = " ".join(line for line in lines if line)
    path = Path(path)
    weights = path.with_suffix(".bin")
    size = path.stat().st_size if path.is_file() else None
    if "bin file cannot be found" in text:
        state = "empty" if weights.is_file() else "missing"
        return f"its weights file {weights} is {state}: keep the .bin beside the .xml"
    if "Incorrect weights in bin file" in text:
        have = weights.stat().st_size if weights.is_file() else 0
        return (f"its weights file {weights} is shorter than the graph needs ({have} bytes): cut short, or "
                "the .bin of another graph; copy it again whole")
    if m := re.search(r"(?:tag|attribute|comment|declaration|document|element|CDATA)\b.*? at offset (\d+)", text):
        return f"its XML is damaged at byte {m[1]} of {size} (cut short?); copy it again whole"
    if m := re.search(r"externally stored data in file \(([^,]+), offset: (\d+), data_length: (\d+)\)", text):
        data = path.parent / m[1]
        if not data.is_file():
            return f"its external data file {data} is missing: keep it beside the .onnx file"
        return (f"its external data file {data} is cut short ({data.stat().st_size} bytes; a tensor needs "
                f"bytes {m[2]} to {int(m[2]) + int(m[3])}): copy it again whole")
    if "Unable to read the model" in text:
        return {0: "it is empty", None: "it does not exist"}.get(
            size, "it is no OpenVINO IR (.xml) or ONNX model OpenVINO can read")
    return text[:240]


def ov_compiled_said(path: Path, *args, **kwargs):
    """`cache.ov_compiled`, with a file OpenVINO cannot read or compile as one line (UserError);
    a cached file removed meanwhile stays OpenVINO's error, which `auto.cpu_runner` builds again on."""
    try:
        return ov_compiled(path, *args, **kwargs)
    except RuntimeError as exc:
        cached = Path(path).resolve().is_relative_to(cache_dir().resolve())
        if cached and file_vanished(exc):
            raise
        hint = "; it is in upsample's cache: `upsample cache clear` and run again" if cached else ""
        raise UserError(f"{path}: OpenVINO cannot read or compile it ({ov_reason(exc, path)}){hint}") from None


def file_session(path: Path, backend: str, device: torch.device, *, precision: str | None = "f32",
                 threads: int | None = None, ov_device: str = "CPU"):
    """A callable float NCHW tensor -> tensor running the graph in `path` (.onnx for onnxruntime,
    OpenVINO .xml or .onnx for openvino; OpenVINO on `ov_device` in `precision` f32 or bf16, or
    None: a GPU's or NPU's own)."""
    if backend == Backend.ONNXRUNTIME:
        sess = ort_session(str(path), device, threads)

        def run_ort(x: torch.Tensor) -> torch.Tensor:
            out = sess.run(None, {"input": x.detach().cpu().float().numpy()})[0]
            return torch.from_numpy(out).to(x.device)
        return run_ort
    if backend == Backend.OPENVINO:
        return _on_tensors(per_thread(ov_compiled_said(path, precision, threads, ov_device)))
    raise UserError(f"unknown backend {backend!r}")


def _on_tensors(run):
    """`run` (an OpenVINO call, numpy in -> out) as a float NCHW tensor -> tensor callable."""
    def run_ov(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(run(x.detach().cpu().float().numpy()))).to(x.device)
    return run_ov


def parallel_session(path: Path, *, precision: str | None, threads: int | None = None,
                     ov_device: str = "CPU") -> tuple[Callable, int]:
    """The OpenVINO graph in `path` compiled with the THROUGHPUT hint: (a callable as
    `file_session`'s, safe to call from several threads at once, each on its own stream; how many
    threads keep it busy - OpenVINO's optimal number of requests). On 2 cores: 2 streams of one
    thread each, which ran espcn-x3's video frames 20 % faster than one frame over both threads."""
    compiled = ov_compiled_said(path, precision, threads, ov_device, throughput=True)
    requests = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
    return _on_tensors(per_thread(compiled)), requests


def session_runner(model: nn.Module, backend: Backend, device: torch.device,
                   threads: int | None = None, ov_device: str = "CPU") -> Runner:
    """`model` exported (cached by weights hash) and run in fp32 on onnxruntime or openvino
    (OpenVINO on `ov_device`, asked for f32 there too)."""
    path = cached_ir(model) if backend == Backend.OPENVINO else cached_onnx(model)
    runtime = str(backend) if ov_device == "CPU" else f"{backend} {ov_device}"
    try:
        run = file_session(path, backend, device, threads=threads, ov_device=ov_device)
    except UserError:
        raise
    except Exception:  # noqa: BLE001 - onnxruntime raises its own kinds
        if backend != Backend.ONNXRUNTIME:
            raise
        # a damaged cached .onnx (a disk that filled, another run's cache clear): exported once more
        run = file_session(cached_onnx(model, again=True), backend, device, threads=threads)
    return Runner(run=run, spec=model.upsample_spec, runtime=runtime, model=model)


VIRTUAL = ("AUTO", "MULTI", "HETERO")  # OpenVINO's devices made of the others ("AUTO:GPU,CPU")
NEEDS_TARGETS = ("MULTI", "HETERO")  # OpenVINO cannot compile these without their devices named


def openvino_device(name: str) -> str | None:
    """`--device` as an OpenVINO device name - "CPU", "GPU", "GPU.1", "NPU", "AUTO",
    "AUTO:GPU,CPU", as OpenVINO reports them - or None for torch's "cpu" / "cuda[:N]". A device
    this machine lacks, or MULTI / HETERO without their devices, is one line listing the ones it has."""
    if name == "cpu" or name.split(":")[0] == "cuda":
        return None
    have = openvino_devices()
    plugin, colon, targets = name.partition(":")
    parts = [d for d in targets.split(",") if d] if plugin in VIRTUAL else [name]
    if plugin in VIRTUAL and not parts and (colon or plugin in NEEDS_TARGETS):
        raise UserError(f"--device {name} needs the devices it spreads over: name them, e.g. "
                        f"{plugin}:{','.join(have) or 'CPU'} (this machine's: {', '.join(have) or 'none'})")
    if all(d in have or any(h.split(".")[0] == d for h in have) for d in parts) and (have or parts):
        return name
    torch_ones = "cpu, cuda" if torch.cuda.is_available() else "cpu"
    virtual = "AUTO, or AUTO:/MULTI:/HETERO: followed by some of them"
    raise UserError(f"--device {name}: not on this machine; it has {torch_ones} (torch) and "
                    f"{', '.join([*have, virtual]) if have else 'no OpenVINO device'} (OpenVINO, "
                    "--backend auto or openvino)")


def on_cpu_only(device: str) -> bool:
    """Whether an OpenVINO device computes on the CPU alone: "CPU", or a virtual one whose
    devices - named ("AUTO:CPU", "MULTI:CPU"), or for a bare "AUTO" all that OpenVINO finds
    here - are the CPU only. Such a device runs as "CPU" does: the gated graphs of `auto`."""
    plugin, _, targets = device.partition(":")
    if plugin not in VIRTUAL:
        return device.split(".")[0] == "CPU"
    parts = [d for d in targets.split(",") if d] or (openvino_devices() if plugin == "AUTO" else [])
    return bool(parts) and all(d.split(".")[0] == "CPU" for d in parts)
