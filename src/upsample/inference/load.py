"""Resolve what the user named (bicubic, a registered model or an alias, a checkpoint, an int8
file, another project's ONNX graph) and build the one `Upscaler` for it on the backend asked for:
the runtimes give runners, this wraps them."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from ..runtime.kinds import BACKENDS, PRECISIONS, Backend, Precision
from ..runtime.pytorch import torch_runner
from ..runtime.runner import Runner
from .sizes import check_scale  # (torch-free, for the CLI; callers import it from here too)
from .upscaler import BicubicUpscaler, ModelUpscaler, Upscaler

# `.tar`: Lornatang's and other ports' `NAME.pth.tar` (a torch.save file, not a tar archive);
# `.state`/`.pkl`: what BasicSR and older ports name theirs (a missing one says "not found")
CHECKPOINT_SUFFIXES = {".safetensors", ".pth", ".pt", ".ckpt", ".bin", ".tar", ".state", ".pkl"}
INT8_SUFFIXES = {".onnx", ".xml"}  # `upsample quantize` output; an .onnx without its metadata
# is another project's graph (runtime.foreign_onnx)


def resolve_model(spec: str, scale: float | None = None, *,
                  takes_bicubic: bool = False) -> tuple[nn.Module, str]:
    """A registered name or a checkpoint path -> (torch model in eval mode, display name). `scale`
    (the one asked for) reads a checkpoint whose tensors do not tell it (`detect_arch`).
    `takes_bicubic`: the caller also takes "bicubic" (image, eval, video, bench), which an unknown
    name's suggestion then offers; prune, quantize, export... take a network only."""
    from ..models import checkpoint, registry
    if spec == "bicubic":  # the commands that resolve a network (export, quantize, prune ...)
        raise UserError("bicubic is MATLAB's resize, with no network to work on; name a model")
    if registry.is_registered(spec):
        weights = registry.weights_path(spec)
        if weights:
            model, meta = checkpoint.load_checkpoint(weights)
            model.trained_scales, model.trained_degrade = _trained_scales(meta), _trained_degrade(meta)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)  # the same untrained model every time, on every backend
                model = registry.create_model(spec)
            print(f"note: {spec} has no trained weights yet; using an untrained (random) model",
                  file=sys.stderr)
        return model.eval(), spec
    path = Path(spec)
    if not path.exists() and path.suffix.lower() in INT8_SUFFIXES:  # not "unknown model 'x.onnx'"
        raise UserError(f"model file not found: {spec}")
    if path.exists() or path.suffix.lower() in CHECKPOINT_SUFFIXES or "/" in spec or "\\" in spec:
        model, meta = checkpoint.load_checkpoint(path, scale=_whole(scale))  # says "not found" for a missing path
        model.trained_scales, model.trained_degrade = _trained_scales(meta), _trained_degrade(meta)
        return model.eval(), spec
    try:
        registry.get_spec(spec)
    except UserError as exc:
        others = "'bicubic', or a checkpoint file" if takes_bicubic else "a checkpoint file"
        raise UserError(f"{exc} (or {others})") from None
    raise AssertionError("unreachable")  # pragma: no cover


def _trained_scales(meta: dict) -> tuple[float, ...]:
    """The scales a checkpoint of our trainer was trained at (its recipe's model.scales), sorted;
    () for a fixed-scale model or a file without a recipe."""
    scales = ((meta.get("config") or {}).get("model") or {}).get("scales") or ()
    try:
        return tuple(sorted({float(s) for s in scales}))
    except (TypeError, ValueError):
        return ()


def _trained_degrade(meta: dict) -> dict:
    """The [degrade] table of the recipe a checkpoint of our trainer was trained with ({} for a
    file without one): how its LR was made."""
    degrade = (meta.get("config") or {}).get("degrade")
    return degrade if isinstance(degrade, dict) else {}


def _whole(scale) -> int | None:
    """`scale` (a number or the text of --scale) as an int where it is a whole number, else None."""
    try:
        s = float(scale)
    except (TypeError, ValueError):
        return None
    return int(s) if s.is_integer() else None


# The largest factor taken: its memory probes (96 px tiles, `memory.PROBE`) stay ~0.1 GB of
# output there, where x1000 asked for tens of GB before any tile was planned.
def model_scale(spec, scale, name: str, trained: tuple[float, ...] = ()) -> float:
    """The scale to run a model of `spec` (its `upsample_spec`) at: its own, which a given `scale`
    must match, or for a pre-upsampling model (VDSR) the given one, else the one it was `trained`
    at where that is one scale."""
    if spec.scale is None:
        if scale is None and len(trained) == 1:
            return trained[0]
        if scale is None:
            at = f" (trained at {', '.join(f'x{t:g}' for t in trained)})" if trained else ""
            raise UserError(f"{name} works at any scale{at}: give one with --scale (e.g. --scale "
                            f"{trained[0] if trained else 2:g})")
        s = check_scale(scale)
        if s < 1:
            raise UserError(f"{name} upscales: --scale must be >= 1, got {scale}")
        return s
    if scale is not None and check_scale(scale) != spec.scale:
        raise UserError(f"{name} is a x{spec.scale} model but --scale is {check_scale(scale):g}: use --scale "
                        f"{spec.scale}, or a x{check_scale(scale):g} model")
    return float(spec.scale)


def scale_of(model, scale, name: str) -> float:
    """`model_scale` of a model from `resolve_model`, which knows the scales it was trained at."""
    return model_scale(model.upsample_spec, scale, name, getattr(model, "trained_scales", ()))


def check_device(device: str, backend: str) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device {device!r}: use cpu or cuda") from None
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"unsupported device {device!r}: use cpu or cuda")
    if dev.type == "cuda":
        if backend == Backend.OPENVINO:
            raise UserError("the openvino backend runs on the CPU here: use --device cpu")
        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA GPU is available to torch; use --device cpu")
    return dev


def is_untrained(spec: str) -> bool:
    """`spec` is a registered model without trained weights, or our checkpoint or export made
    from one (`prune`/`export --allow-untrained`: its metadata says so)."""
    from ..models import registry
    if registry.is_registered(spec):
        return registry.weights_path(spec) is None
    if Path(spec).suffix.lower() == ".onnx" and Path(spec).is_file():
        from ..runtime.foreign_onnx import export_marked_untrained
        return export_marked_untrained(Path(spec))
    from ..models.checkpoint import marked_untrained
    return marked_untrained(spec)


def lacks_weights(spec: str, allow_untrained: bool = False) -> bool:
    """`spec` has no trained weights (`is_untrained`), and random weights were not asked for
    (`allow_untrained`, `--allow-untrained`, or $UPSAMPLE_ALLOW_UNTRAINED=1)."""
    if allow_untrained or os.environ.get("UPSAMPLE_ALLOW_UNTRAINED") == "1":
        return False
    return is_untrained(spec)


def check_trained(spec: str, allow_untrained: bool = False) -> None:
    """A registered model without trained weights makes no image unless asked (its output is
    noise with the right shape): `allow_untrained` (`--allow-untrained`, or
    $UPSAMPLE_ALLOW_UNTRAINED=1) lets timing runs use its random weights."""
    from ..models import registry
    if not lacks_weights(spec, allow_untrained):
        return
    shipped = [n for n in registry.list_models("generator") if registry.weights_path(n)]
    what = "has no trained weights" if registry.is_registered(spec) else "was made from untrained (random) weights"
    raise UserError(f"{spec} {what}: give a trained checkpoint file instead, "
                    f"train one with `upsample train`, or use a shipped model ({', '.join(shipped)}); "
                    "--allow-untrained runs its random weights, for timing only")


# One upscaler is built at a time: torch.onnx.export (the runtimes' exports, auto's gate) keeps
# global state, and two threads loading on a cold cache (a web service's first requests) failed
# with "GLOBALS.in_onnx_export must be False".
_BUILDING = threading.RLock()


def load_upscaler(spec: str, *, scale: float | None = None, backend: str = "auto",
                  device: str = "cpu", precision: str = "auto", threads: int | None = None,
                  quiet: bool = False, allow_untrained: bool = False) -> Upscaler:
    """Resolve "bicubic", a registered model name or a checkpoint path to an Upscaler.
    `precision` (auto, fp32, bf16, fp16, int8) applies to the auto backend; the others run fp32.
    A registered model without trained weights is refused unless `allow_untrained`. Safe to
    call from several threads at once (they build one after the other)."""
    with _BUILDING:
        return _build_upscaler(spec, scale=scale, backend=backend, device=device, precision=precision,
                               threads=threads, quiet=quiet, allow_untrained=allow_untrained)


def bicubic_device(device: str) -> torch.device:
    """Where bicubic (torch) runs: an OpenVINO name that can only mean the CPU (CPU, AUTO:CPU) is
    the CPU; another (GPU, NPU), a typo or cuda without a GPU is the one line of `check_device`,
    where torch's traceback came at the first image."""
    from ..runtime.sessions import on_cpu_only, openvino_device
    ov_device = openvino_device(device)
    if ov_device is not None and on_cpu_only(ov_device):
        return torch.device("cpu")
    if ov_device is not None:
        raise UserError(f"--device {device}: bicubic runs in torch, on cpu or cuda; OpenVINO devices "
                        "run models (use --device cpu)")
    return check_device(device, Backend.TORCH)


def _build_upscaler(spec: str, *, scale, backend: str, device: str, precision: str,
                    threads: int | None, quiet: bool, allow_untrained: bool) -> Upscaler:
    is_int8 = Path(spec).suffix.lower() in INT8_SUFFIXES
    backend, precision = _check_options(backend, precision, threads, int8_file=is_int8)
    if spec == "bicubic":
        if scale is None:
            raise UserError("bicubic needs --scale")
        if backend not in (Backend.TORCH, Backend.AUTO):
            raise UserError("bicubic runs on the torch backend only")
        if precision not in (Precision.AUTO, Precision.FP32):  # was run in fp32 without a word
            raise UserError(f"bicubic runs in fp32 only (MATLAB's resize, exact): leave out --precision {precision}")
        return BicubicUpscaler(check_scale(scale), bicubic_device(device))
    from ..runtime.sessions import on_cpu_only, openvino_device
    ov_device = openvino_device(device)  # "GPU", "NPU", "AUTO" ...: OpenVINO's; tensors stay on the CPU
    if ov_device is not None and on_cpu_only(ov_device):
        ov_device = "CPU"  # AUTO, AUTO:CPU, MULTI:CPU ... that can only pick the CPU: run as on it, gated
    if ov_device is not None and backend not in (Backend.AUTO, Backend.OPENVINO):
        raise UserError(f"--device {device} is an OpenVINO device: use --backend auto or openvino")
    device = "cpu" if ov_device is not None else device
    dev = check_device(device, Backend.OPENVINO if backend == Backend.AUTO and device == "cpu" else backend)
    from ..runtime import foreign_onnx
    if foreign_onnx.is_foreign(Path(spec)):  # (an `export --allow-untrained` graph says it is one)
        check_trained(spec, allow_untrained)
        return _foreign_upscaler(Path(spec), scale, backend, precision, dev, threads, ov_device)
    if precision == Precision.BF16 and ov_device not in (None, "CPU"):
        raise UserError(f"--precision bf16 is for the CPU's bf16 units; on the OpenVINO device {ov_device} "
                        "use --precision fp32 (exact) or auto (the device's own precision)")
    # int8 without an int8 file: only auto on the CPU has one (its cached model, `bench --calib`)
    cpu_auto = backend == Backend.AUTO and dev.type == "cpu" and ov_device in (None, "CPU")
    if precision == Precision.INT8 and not is_int8 and not cpu_auto:
        raise UserError(f"--precision int8 runs on the CPU with --backend auto, or with an int8 model: "
                        f"make one with `upsample quantize {spec} --backend openvino --calib DIR -o "
                        f"{Path(spec).stem}-int8.xml` and pass that")
    if is_int8:  # written by `upsample quantize`
        return _int8_upscaler(Path(spec), scale, backend, precision, dev, threads, ov_device, allow_untrained)
    check_trained(spec, allow_untrained)
    model, name = resolve_model(spec, scale, takes_bicubic=True)
    if model.upsample_spec.kind != "generator":
        raise UserError(f"{name} is a {model.upsample_spec.kind}, not an upscaler")
    s = scale_of(model, scale, name)
    runner = _runner(model, backend, dev, name=name, scale=s, precision=precision, threads=threads,
                     quiet=quiet, ov_device=ov_device or "CPU")
    up = ModelUpscaler.from_runner(runner, scale=s, name=name, backend=backend, device=dev)
    if backend == Backend.AUTO and dev.type == "cpu":  # a plan (`fastpath`) stamps the weights file
        # not for random weights: a later run's plan hit would skip the refusal above
        up.from_file = not is_untrained(spec)
    return up


def _foreign_upscaler(path: Path, scale, backend: Backend, precision: Precision, dev: torch.device,
                      threads: int | None, ov_device: str | None) -> Upscaler:
    """Another project's image-to-image ONNX graph, run as it is (auto: on onnxruntime, or on
    OpenVINO where an OpenVINO device other than the CPU is asked, which onnxruntime has not)."""
    from ..runtime.foreign_onnx import foreign_runner
    if precision not in (Precision.AUTO, Precision.FP32):
        raise UserError(f"{path} runs in the precision it was exported in: leave --precision out")
    ov_device = ov_device or "CPU"
    runtime = Backend.OPENVINO if backend == Backend.AUTO and ov_device != "CPU" else backend
    runner, name = foreign_runner(path, runtime, dev, threads, ov_device=ov_device,
                                  ov_precision=_file_precision(backend, precision, ov_device))
    return ModelUpscaler.from_runner(runner, scale=model_scale(runner.spec, scale, name), name=name,
                                     backend=backend, device=dev)


def _int8_upscaler(path: Path, scale, backend: Backend, precision: Precision, dev: torch.device,
                   threads: int | None, ov_device: str | None, allow_untrained: bool) -> Upscaler:
    """An int8 file of `upsample quantize`, on the runtime asked (auto: the one it was made for)."""
    from ..runtime.int8 import BACKEND_OF, load_runner, read_meta
    # fp32 is eval's default and the float backends' one mode: for an int8 file, its own arithmetic
    if precision not in (Precision.AUTO, Precision.INT8, Precision.FP32):
        read_meta(path)  # a file that is no int8 model says so first
        raise UserError(f"{path} is an int8 model and runs only in int8: leave --precision out or give "
                        f"--precision int8 (for {precision}, run the model it was quantized from)")
    runtime = BACKEND_OF.get(path.suffix.lower(), Backend.ONNXRUNTIME) if backend == Backend.AUTO else backend
    ov_device = ov_device or "CPU"
    if runtime == Backend.ONNXRUNTIME and ov_device != "CPU":
        raise UserError(f"{path} is an int8 onnxruntime model, which runs on no OpenVINO device: use --device "
                        f"cpu, or quantize with `upsample quantize ... --backend openvino` for {ov_device}")
    runner, name = load_runner(path, runtime, dev, threads=threads, ov_device=ov_device,
                               ov_precision=_file_precision(backend, precision, ov_device),
                               allow_untrained=allow_untrained)
    return ModelUpscaler.from_runner(runner, scale=model_scale(runner.spec, scale, name), name=name,
                                     backend=backend, device=dev)


def _file_precision(backend: Backend, precision: Precision, ov_device: str) -> str | None:
    """OpenVINO's precision for a graph file (int8, another project's) on `ov_device`: f32 on the
    CPU, and elsewhere under --backend openvino or --precision fp32; else (None) the device's own,
    as for our models (README: `--device`)."""
    exact = ov_device == "CPU" or backend == Backend.OPENVINO or precision == Precision.FP32
    return "f32" if exact else None


def _check_options(backend: str, precision: str, threads: int | None, *,
                   int8_file: bool = False) -> tuple[Backend, Precision]:
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    backend, precision = Backend(backend), Precision(precision)
    if precision not in (Precision.AUTO, Precision.FP32) and backend != Backend.AUTO and not (
            int8_file and precision == Precision.INT8):  # an int8 file runs int8 on its runtime
        raise UserError(f"--precision {precision} needs --backend auto (the {backend} backend runs fp32)")
    if threads is not None:
        if threads < 1:
            raise UserError(f"the number of threads (--threads, threads=) must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    return backend, precision


def _runner(model: nn.Module, backend: Backend, dev: torch.device, *, name: str, scale: float,
            precision: Precision, threads: int | None, quiet: bool, ov_device: str = "CPU") -> Runner:
    """The runtime asked for turns the model into a runner (auto: the fastest that holds here)."""
    if backend == Backend.AUTO:
        from ..runtime import auto
        if dev.type == "cuda":
            return auto.cuda_runner(model, name=name, device=dev, precision=precision, quiet=quiet)
        return auto.cpu_runner(model, name=name, scale=scale, precision=precision, threads=threads,
                               quiet=quiet, device=ov_device)
    if backend == Backend.TORCH:
        return torch_runner(model, dev)
    from ..runtime.sessions import session_runner
    return session_runner(model, backend, dev, threads=threads, ov_device=ov_device)
