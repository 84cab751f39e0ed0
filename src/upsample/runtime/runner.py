"""What a runtime hands back: a `Runner`, the network made callable plus what it is.

The runtimes (PyTorch, ONNX Runtime, OpenVINO, int8 files, `auto`'s chooser) each turn a model into
a Runner; `inference.load` wraps it in the one `Upscaler`. A Runner knows nothing of images: it maps
the network's input (float NCHW, Y or RGB in [0, 1]) to its output, except `run_rgb`, the whole
RGB -> RGB pipeline where a runtime built it as one graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..models.registry import ModelSpec
from .kinds import Precision

Net = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Runner:
    run: Net                              # the network: float NCHW in, float NCHW out
    spec: ModelSpec                       # how to feed it (scale, Y or RGB, pre-upsampling)
    runtime: str = "torch"                # what runs it, as reported: "openvino, fused edges", ...
    precision: Precision = Precision.FP32  # the arithmetic it runs in
    model: nn.Module | None = None        # the torch module run; None for an int8 file
    run_rgb: Net | None = None            # RGB -> RGB in one graph (auto on the CPU, Y models)
    graph: tuple[Path, str] | None = None  # the OpenVINO graph (and its precision) `fastpath` reruns
    eight_bit: bool = False               # a uint8 graph: it takes or gives 8-bit levels only
    # The network compiled to serve several threads at once (OpenVINO streams), made when first
    # asked: (its callable, how many threads keep it busy). Video runs frames side by side on it.
    parallel: Callable[[], tuple[Net, int]] | None = None
