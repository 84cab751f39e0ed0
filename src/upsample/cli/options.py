"""Command-line options shared by `image`, `video`, `eval` and `bench` (the backend and
precision names they take are `runtime.kinds`).

Torch-free on purpose: `upsample image` parses its arguments (and, on a cache hit, runs
`fastpath`) without importing torch, whose import alone takes 1.5-2 s on the 2-core CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from ..errors import UserError
from ..inference.sizes import MIN_UNITLESS_MEMORY, check_scale, parse_memory, parse_size
from ..inference.tiling import MIN_TILE
from ..runtime import kinds
from ..runtime.kinds import BACKENDS, PRECISIONS


def silence(stream) -> None:
    """Point `stream`'s file at /dev/null once its reader has gone (a closed pipe: `| head`):
    what it still buffers, and writes after, go nowhere instead of raising again (at exit too)."""
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, stream.fileno())
    finally:
        os.close(null)


def count_or_all(text: str) -> int:
    """An argparse type: a whole number >= 0, where 0 means all (refused while parsing)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def tile_side(text: str) -> int:
    """An argparse type: --tile's side, 0 (whole images) or at least MIN_TILE px (a 1 px tile ran
    an 80x96 picture at 8 pixels a second, each tile carrying its pad of context)."""
    value = count_or_all(text)
    if 0 < value < MIN_TILE:
        raise argparse.ArgumentTypeError(f"a tile of {value} px runs the model once per {value}x{value} "
                                         f"pixels (and its pad of context): give 0 (whole images) or "
                                         f"at least {MIN_TILE}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (refused while parsing, before any model loads)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def check_scale_text(text: str | None, option: str = "--scale") -> None:
    """A scale given (not None) checked as the loader checks it, before the 2 s import of torch and
    the model's load ("abc" was refused only after them; bicubic's 1e9 after "bicubic x1000000000")."""
    if text is not None:
        check_scale(text, option)


MAX_THREADS = 1024  # past this a thread pool only costs memory and start-up (and can fail to start)


def thread_limit() -> int:
    """The most CPU threads an option takes: 4 per core (oversubscription past that only slows
    the work down), at most MAX_THREADS."""
    return min(MAX_THREADS, 4 * (os.cpu_count() or 1))


def _within_thread_limit(text: str, too_many: str, advice: str = "") -> int:
    """A whole number from 1 to `thread_limit()`; past it an argparse error: "N {too_many}: at most ..."."""
    value = positive_int(text)
    if value > thread_limit():
        raise argparse.ArgumentTypeError(f"{value} {too_many}: at most {thread_limit()} (4 per CPU core){advice}")
    return value


def thread_count(text: str) -> int:
    """An argparse type for --threads: a whole number from 1 to `thread_limit()`."""
    return _within_thread_limit(text, "threads is more than this machine can use",
                                "; leave --threads out for all cores")


def job_count(text: str) -> int:
    """An argparse type for --jobs (images at once, each on a thread): 1 to `thread_limit()`."""
    return _within_thread_limit(text, "images at once is more than this machine can run")


def thread_count_or_default(text: str) -> int:
    """An argparse type for --threads where 0 means the default: 0, or as `thread_count`."""
    return 0 if count_or_all(text) == 0 else thread_count(text)


def add_runtime_options(p: argparse.ArgumentParser, precision: str) -> None:
    """--backend, --precision, --device, --threads: shared by image, video, eval and bench."""
    p.add_argument("--backend", default=os.environ.get("UPSAMPLE_BACKEND") or "auto", choices=BACKENDS,
                   help="auto (default, or $UPSAMPLE_BACKEND: the fastest graph here whose picture passes a "
                        "quality check against fp32; README, 'Speed: --backend auto'), torch, onnxruntime "
                        "or openvino")
    p.add_argument("--precision", default=precision, choices=PRECISIONS,
                   help=f"for --backend auto (default {precision}): auto = bf16/int8/fp16 where the "
                        "picture's PSNR stays within 0.02 dB of fp32's on a probe set; fp32 = exact; "
                        "int8 = an `upsample quantize` output as --model, or auto's cached int8 model")
    p.add_argument("--device", default="cpu",
                   help="cpu or cuda (torch), or an OpenVINO device for --backend auto|openvino: "
                        "CPU, GPU, NPU, AUTO, as OpenVINO names them")
    p.add_argument("--threads", type=thread_count, default=None, help="CPU threads (default: all cores)")
    add_untrained_option(p)


def add_untrained_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-untrained", action="store_true",
                   help="run a registered model that has no trained weights (random weights: for "
                        "timing only; default: refused)")


def add_model_options(p: argparse.ArgumentParser, *, default: str = "the best shipped model for "
                      "--scale, else bicubic") -> None:
    """The options that pick and run the upscaler, shared by `image` and `video`."""
    p.add_argument("--model", default=None, type=path_text,
                   help=f"bicubic, a registered name or a checkpoint (default: {default})")
    p.add_argument("--scale", default=None,
                   help="model scale (default: the model's; 2 for bicubic and for the default model; "
                        "the shipped multi-scale vdsr needs one)")
    add_runtime_options(p, precision="auto")
    p.add_argument("--half", action="store_true",
                   help="half precision without the auto check (fp16 on CUDA, bf16 on CPU)")
    p.add_argument("--tile", type=tile_side, default=None, metavar="PX",
                   help="tile side in input pixels, at least 16; 0: whole images, as Real-ESRGAN's --tile 0 "
                        "(default: from --max-memory; whole images where they fit)")
    p.add_argument("--max-memory", default=None, metavar="SIZE",
                   help="memory to stay within, e.g. 2GB; picks the tile size (default: half the free memory)")
    p.add_argument("--tile-batch", default="auto", metavar="N",
                   help="tiles of one size per model call (auto: 1 on the CPU; on a GPU the fastest "
                        "of 1/2/4/8 that fits, timed once per tile size)")


def memory_limit(text: str | None) -> int | None:
    """--max-memory in bytes (None: not given); a small number without a unit refused before any
    model loads."""
    if text is None:
        return None
    value = parse_memory(text)
    if value < MIN_UNITLESS_MEMORY and not any(c.isalpha() for c in text):
        raise UserError(f"--max-memory {text} is {value} bytes, too little for any picture: write the "
                        "unit, e.g. 2GB, 1.5G or 800MB")
    return value


def check_half(args: argparse.Namespace) -> None:
    """`kinds.check_half` of the options, before torch is imported."""
    kinds.check_half(args.half, args.precision)


RECIPE_FILE = "a recipe file, e.g. configs/espcn-x3.toml"  # what else train's and tune's CONFIG may be


def check_name_or_file(arg: str, other: str = "a checkpoint file") -> None:
    """A model name as a user types it (no folder, no extension) that is neither a file nor a
    registered model: the registry's "unknown model ...; did you mean" line, where the loader said
    "checkpoint not found: espnc-x2" as if a file were meant. `other`: what else `arg` may be."""
    if "/" in arg or "\\" in arg or os.path.splitext(arg)[1] or os.path.lexists(arg):
        return
    from ..models import registry  # torch: only for a name that is not a file
    if not registry.is_registered(arg):
        try:
            registry.get_spec(arg)
        except UserError as exc:
            raise UserError(f"{exc} (or {other})") from None


def path_text(text: str) -> str:
    """An argparse type: a path that is not empty ("" - an unset shell variable - meant the
    current folder: a whole tree read, or outputs written where the command ran)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path (an unset shell variable?); name a file or folder")
    return text


def output_text(text: str) -> str:
    """An argparse type for where results go: `path_text`, and not "-" (no command writes to
    standard output: a folder or file named "-" was made)."""
    if path_text(text) == "-":
        raise argparse.ArgumentTypeError("standard output is not written (-); name a file or folder")
    return text


def add_output_option(p: argparse.ArgumentParser, *, help: str, required: bool = True,
                      metavar: str = "OUT", dest: str = "output", default=None) -> None:
    """-o/--output, the one spelling of "where the result goes" (--out: a hidden old spelling)."""
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("-o", "--output", dest=dest, metavar=metavar, default=default, help=help, type=output_text)
    g.add_argument("--out", dest=dest, metavar=metavar, default=default, help=argparse.SUPPRESS, type=output_text)


def add_overwrite_option(p: argparse.ArgumentParser, help: str = "replace existing outputs "
                         "(default: refuse, or skip in a batch)") -> None:
    """--overwrite, the one spelling of "replace what is there" (--force: a hidden old spelling)."""
    p.add_argument("--overwrite", action="store_true", help=help)
    p.add_argument("--force", dest="overwrite", action="store_true", help=argparse.SUPPRESS)


class Stopped(Exception):
    """Ctrl-C / SIGTERM while an output was being made, said (by `said_stopped`) in one line; the
    CLI (`cli._command_status`) ends with its `status`."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


@contextlib.contextmanager
def said_stopped(command: str, out, last=None):
    """Ctrl-C (130) / SIGTERM (143) in the block said in one line: what was kept (nothing under
    `out`: outputs are renamed into place when whole) and how to go on; raises `Stopped`. `last`:
    the file of a folder `out` that is put in place last (the folder changes as it is staged in)."""
    from . import Terminated
    watched = out if last is None else last
    before = _identity(watched)
    try:
        yield
    except KeyboardInterrupt as exc:
        how = "terminated" if isinstance(exc, Terminated) else "interrupted"
        if _identity(watched) != before:  # it came after the rename into place
            kept = f"after {out} was written whole"
        else:
            kept = (f"nothing written to {out} (a file there before is as it was): run the same command "
                    "again to start over")
        print(f"upsample {command}: {how}, {kept}", file=sys.stderr)
        raise Stopped(143 if isinstance(exc, Terminated) else 130) from None


def _identity(path) -> tuple | None:
    """Which file `path` is (inode, change time), or None: a rename into place changes it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_ctime_ns, st.st_size


def add_max_pixels_option(p: argparse.ArgumentParser) -> None:
    """--max-pixels, for every command that reads image files (`main` applies it)."""
    p.add_argument("--max-pixels", default=None, metavar="N",
                   help="largest image read, in pixels, e.g. 500M (0: no limit; default: Pillow's "
                        "decompression-bomb guard, 179M)")


def apply_max_pixels(text: str) -> None:
    """--max-pixels for this process (`parse_pixels`)."""
    from ..media.imageio import set_max_pixels
    set_max_pixels(parse_pixels(text))


def parse_pixels(text: str) -> int:
    """--max-pixels: a count as "500M", "1.2G" or "40000000" (0: no limit)."""
    try:
        value = parse_size(text)
    except UserError:
        value = -1
    if value < 0 or (value == 0 and any(c in "123456789" for c in text)):
        # a fraction that rounds to 0 pixels ("0.5", meant as 0.5G) turned the guard off
        raise UserError(f"--max-pixels must be a number of pixels, e.g. 500M, or 0 for no limit; "
                        f"got {text!r}")
    return value
