"""The names of backends and precisions: one table each, compared as enum members, not strings.

Torch-free (the `image` command's options are built from it before torch is imported).
"""

from __future__ import annotations

from enum import StrEnum

from ..errors import UserError


class Backend(StrEnum):
    """Where the network runs (`--backend`)."""
    AUTO = "auto"                # the fastest correct runtime here (`runtime.auto`)
    TORCH = "torch"
    ONNXRUNTIME = "onnxruntime"
    OPENVINO = "openvino"


class Precision(StrEnum):
    """The arithmetic the network runs in (`--precision`); auto = the fastest that holds."""
    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"
    INT8 = "int8"


BACKENDS = tuple(b.value for b in Backend)
PRECISIONS = tuple(p.value for p in Precision)


def check_half(half: bool, precision: str) -> None:
    """--half is half precision unchecked: with a --precision other than auto (which it replaces)
    the two ask for different things, and --precision fp32 was silently run in bf16 (the CLI and
    `upsample.load` both ask here; bf16 / fp16 are what --half asks for too)."""
    if half and precision in (Precision.FP32, Precision.INT8):
        raise UserError(f"--half and --precision {precision} ask for two precisions: give one of "
                        "them (--half: fp16 on CUDA, bf16 on CPU, without the quality check)")
