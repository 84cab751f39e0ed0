"""ONNX Runtime and OpenVINO sessions over exported graphs, as callables on float NCHW tensors.

The graph files come from `export` (cached by weights hash) or from `upsample quantize`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from .cache import openvino_devices, ov_compiled, per_thread
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
        return _on_tensors(per_thread(ov_compiled(path, precision, threads, ov_device)))
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
    compiled = ov_compiled(path, precision, threads, ov_device, throughput=True)
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
