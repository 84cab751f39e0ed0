"""The names of backends and precisions: one table each, compared as enum members, not strings.

Torch-free (the `image` command's options are built from it before torch is imported).
"""

from __future__ import annotations

from enum import StrEnum


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
