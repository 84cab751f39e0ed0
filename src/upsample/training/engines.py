"""Launchers beside torchrun. `accelerate launch -m upsample train CONFIG` runs the trainer under
Hugging Face Accelerate: its process state starts the process group (gloo on the CPU, nccl on
CUDA), decides this process's rank and device, and its `prepare_model` wraps the networks for
several processes (DDP). Everything else is the loop's own, as under torchrun: each rank draws its
samples, rank 0 validates and writes the run dir, `--resume` continues from last_state.pt.

Precision and compilation stay the recipe's (train.amp, train.compile): an `accelerate launch
--mixed_precision` or `--dynamo_backend` other than "no" is refused with the setting to use
instead, so that one knob decides and the run dir records it.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from ..errors import UserError

# set by `accelerate launch` (every launcher of it) in the processes it starts
ACCELERATE_MARK = "ACCELERATE_MIXED_PRECISION"


class AccelerateEngine:
    """The processes and the network wrapping of Accelerate (`Accelerator`)."""

    name = "accelerate"

    def __init__(self, device: str | None):
        mixed = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
        dynamo = os.environ.get("ACCELERATE_DYNAMO_BACKEND", "no").lower()
        if mixed != "no":
            raise UserError(f"accelerate launch --mixed_precision {mixed}: the trainer's precision is "
                            f"train.amp (--set train.amp='\"{mixed}\"'); launch with --mixed_precision no")
        if dynamo != "no":
            raise UserError(f"accelerate launch --dynamo_backend {dynamo}: the trainer compiles with "
                            "train.compile (--set train.compile=true); launch with --dynamo_backend no")
        if device not in (None, "cpu", "cuda"):
            raise UserError(f"--device must be cpu or cuda, got {device!r}")
        if device == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA GPU is available to torch; use --device cpu")
        from accelerate import Accelerator
        on_cpu = device == "cpu" or not torch.cuda.is_available()
        self.accelerator = Accelerator(cpu=on_cpu, mixed_precision="no")

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def wrap(self, model: nn.Module) -> nn.Module:
        """`model` as the step runs it on several processes (Accelerate's DDP wrapper), or as it
        is in one process."""
        return self.accelerator.prepare_model(model)


def from_launcher(device: str | None) -> AccelerateEngine | None:
    """The engine of the launcher that started this process, None for torchrun or a plain start."""
    if ACCELERATE_MARK not in os.environ:
        return None
    try:
        import accelerate  # noqa: F401  (the optional `distributed` extra)
    except ImportError:
        raise UserError("started by accelerate launch, but the accelerate package is not "
                        "importable here: pip install 'upsample[distributed]'") from None
    return AccelerateEngine(device)
