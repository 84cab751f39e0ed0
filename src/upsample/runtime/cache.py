"""Where exports, OpenVINO's compiled blobs and the precision checks are kept (`upsample cache`).

Torch-free: the `image` fast path compiles its cached graph through here without importing torch.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from ..errors import UserError
from ..media.cache import part_dir, part_files

FUSED_GRAPH = "rgb4"  # `auto.FusedRGB`'s graph version, in its cache names: bump when it changes
PHASES_GRAPH = "phases1"  # `auto.ClampedPhases`' graph version, in its cache names
SPLIT_GRAPH = "split1"  # `auto.SplitInput`'s graph version, in its cache and check names
# The fused graph's bicubic (`degrade.BicubicUp`) mirrors 2 pixels at each border, which a
# one-pixel side cannot give: a picture with a side under this takes the unfused path.
FUSED_MIN_SIDE = 3
# OpenVINO's CPU plugin keeps kernels per input shape: a video or a tiled picture needs a few
# shapes (whole tiles, edge tiles, batches); a folder of many sizes only needs the last ones
RUNTIME_SHAPES_KEPT = 32


def cache_dir() -> Path:
    return part_dir("export")


def ov_compiled(path: Path, precision: str | None = "f32", threads: int | None = None, device: str = "CPU",
                throughput: bool = False):
    """`path` compiled for an OpenVINO `device` (CPU, GPU, NPU, AUTO ...) in `precision` (f32 or
    bf16; f32 must be asked for, since OpenVINO would otherwise pick bf16 on CPUs with bf16 units
    and f16 on Intel GPUs and NPUs), None: the device's own default (not on the CPU); `threads`
    on the CPU; `throughput`: OpenVINO's THROUGHPUT hint (several streams, one input each at a
    time) instead of its default LATENCY (one input over all threads). A device that cannot run
    the precision asked is one line. Compiled blobs are cached beside the exports, so a second
    process starts without recompiling."""
    import openvino as ov
    core = ov.Core()
    blobs = cache_dir() / "openvino"
    try:
        blobs.mkdir(parents=True, exist_ok=True)
        # not mapped: OpenVINO rewrites a blob in place, and a second process compiling the same
        # graph at once then cut the file under this one's map (SIGBUS, the process killed)
        core.set_property({"CACHE_DIR": str(blobs), "ENABLE_MMAP": False})
    except (OSError, RuntimeError):
        pass
    precision = precision or ("f32" if device == "CPU" else None)  # None: a GPU's or NPU's own
    config = {"INFERENCE_PRECISION_HINT": precision} if precision else {}
    if device == "CPU" and threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    if device == "CPU":  # 5000 shapes kept by default, ~0.5 MB each: a service's memory grew by GBs
        config["CPU_RUNTIME_CACHE_CAPACITY"] = RUNTIME_SHAPES_KEPT
    if throughput:
        config["PERFORMANCE_HINT"] = "THROUGHPUT"
    try:
        try:
            return core.compile_model(str(path), device, config)
        except RuntimeError as exc:
            # OpenVINO writes its blob in place: a second process compiling the same graph at once
            # takes the half-written blob for a damaged one and removes it, and this one's write
            # then fails ("cannot set permissions: No such file"); so does a full cache disk.
            # Compile again without the blob cache (a real error is said at once)
            if not (file_vanished(exc) or str(blobs) in str(exc)):
                raise
            return ov.Core().compile_model(str(path), device, config)
    except RuntimeError as exc:
        if device == "CPU" or not precision:
            raise
        first = (str(exc).strip().splitlines() or ["?"])[0]
        raise UserError(f"--device {device} cannot run {precision} ({first}); use --backend auto "
                        "--precision auto for the device's own precision, or --device CPU") from None


def per_thread(compiled):
    """`compiled` (an OpenVINO CompiledModel) as a callable numpy input -> first output that runs
    on an infer request of the calling thread: the CompiledModel's own call shares one request,
    which a second thread finds busy ("Infer Request is busy" under `image --jobs 2`)."""
    local = threading.local()

    def run(x):
        request = getattr(local, "request", None)
        if request is None:
            request = local.request = compiled.create_infer_request()
        return request.infer({0: x})[0]
    return run


def file_vanished(exc: BaseException) -> bool:
    """Whether `exc` says a file was missing (removed by another run's `cache clear`, or by a
    second process rewriting it), in Python's words or OpenVINO's."""
    if isinstance(exc, FileNotFoundError):
        return True
    text = str(exc).lower()
    return any(words in text for words in ("no such file", "could not open the file", "does not exist"))


def readable_ir(xml: Path) -> bool:
    """Whether OpenVINO reads the IR `xml` and its weights whole, and they match their seal
    (`intact`): a cache entry that is missing, truncated or garbage (a disk that filled, a machine
    that crashed mid-write), or whose weights were overwritten at the same length, is made again."""
    if not (xml.is_file() and xml.with_suffix(".bin").is_file()):
        return False
    if not intact(xml, xml.with_suffix(".bin")):
        return False
    import openvino as ov
    try:
        ov.Core().read_model(str(xml))
    except (RuntimeError, OSError):
        return False
    return True


def _seal_path(first: Path) -> Path:
    return first.with_name(first.name + ".sha256")


def _digest(files) -> str | None:
    h = hashlib.sha256()
    try:
        for f in files:
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def seal(*files: Path) -> None:
    """Write the digest of the cache entry `files` beside the first (NAME.sha256), so that
    `intact` finds one damaged later at its full length - zeros where a crash left no data, a
    weights file rewritten under it -, which OpenVINO and onnxruntime read without a complaint
    and would run with wrong weights. An unwritable cache only leaves the entry unsealed."""
    digest, target = _digest(files), _seal_path(files[0])
    if digest is None:
        return
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(digest)
        os.replace(tmp, target)
    except OSError:
        tmp.unlink(missing_ok=True)


def intact(*files: Path) -> bool:
    """Whether the cache entry `files` still has the digest `seal` wrote; an entry without a
    seal (an older cache, an `upsample quantize` output) is taken as it is."""
    try:
        want = _seal_path(files[0]).read_text().strip()
    except OSError:
        return True
    return _digest(files) == want


def openvino_devices() -> list[str]:
    """The devices OpenVINO finds here ("CPU", "GPU", "GPU.1", "NPU" ...); [] without OpenVINO."""
    try:
        import openvino as ov
        return list(ov.Core().available_devices)
    except (ImportError, RuntimeError):
        return []


def cache_files() -> list[Path]:
    return part_files("export")
