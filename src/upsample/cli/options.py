"""Command-line options shared by `image`, `video`, `eval` and `bench` (the backend and
precision names they take are `runtime.kinds`).

Torch-free on purpose: `upsample image` parses its arguments (and, on a cache hit, runs
`fastpath`) without importing torch, whose import alone takes 1.5-2 s on the 2-core CPU.
"""

from __future__ import annotations

import argparse
import os

from ..runtime.kinds import BACKENDS, PRECISIONS


def add_runtime_options(p: argparse.ArgumentParser, precision: str) -> None:
    """--backend, --precision, --device, --threads: shared by image, video, eval and bench."""
    p.add_argument("--backend", default=os.environ.get("UPSAMPLE_BACKEND") or "auto", choices=BACKENDS,
                   help="auto (default, or $UPSAMPLE_BACKEND: the fastest correct runtime here, see "
                        "`upsample.runtime.auto`), torch, onnxruntime or openvino")
    p.add_argument("--precision", default=precision, choices=PRECISIONS,
                   help=f"for --backend auto (default {precision}): auto = bf16/fp16 where it stays "
                        "within 1/255 of fp32; int8 needs an `upsample quantize` output as --model")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    add_untrained_option(p)


def add_untrained_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-untrained", action="store_true",
                   help="run a registered model that has no trained weights (random weights: for "
                        "timing only; default: refused)")


def add_model_options(p: argparse.ArgumentParser, *, default: str = "the best shipped model for "
                      "--scale, else bicubic") -> None:
    """The options that pick and run the upscaler, shared by `image` and `video`."""
    p.add_argument("--model", default=None,
                   help=f"bicubic, a registered name or a checkpoint (default: {default})")
    p.add_argument("--scale", default=None, help="model scale (default: the model's; 2 for bicubic and for the default model)")
    add_runtime_options(p, precision="auto")
    p.add_argument("--half", action="store_true",
                   help="half precision without the auto check (fp16 on CUDA, bf16 on CPU)")
    p.add_argument("--tile", type=int, default=None,
                   help="tile side in input pixels (0: whole image; default: from --max-memory)")
    p.add_argument("--max-memory", default=None, metavar="SIZE",
                   help="memory to stay within, e.g. 2GB; picks the tile size (default: half the free memory)")
    p.add_argument("--tile-batch", default="auto", metavar="N",
                   help="tiles of one size per model call (auto: 1 on the CPU; on a GPU the fastest "
                        "of 1/2/4/8 that fits, timed once per tile size)")
