"""Whether a training batch fits in memory, checked before the first step.

On the CPU a batch too large for the machine is not an error torch can report: the kernel's OOM
killer ends the process mid-step with no message (`--set data.batch_size=100000` did). So before
any step, the activations the networks keep for the backward pass are counted for one patch on
the meta device (no memory, no compute) and, times the batch, compared with what the OS says is
available. The count is a floor - the backward pass and the optimizer need more - so a batch is
refused only when even that does not fit, never on a guess.
"""

from __future__ import annotations

import copy
import os

import torch
import torch.distributed as dist
from torch import nn

from ..errors import UserError
from ..inference.memory import free_memory


def saved_bytes_per_patch(net: nn.Module, shape: tuple[int, int, int]) -> int | None:
    """Bytes of the tensors autograd saves for one (C, H, W) input of `net` (the difference of
    batches of 2 and 1, so weights saved once per call do not count); None where the network
    does not run on the meta device."""
    meta = copy.deepcopy(net).to(device="meta")
    meta.train()
    counts = []
    for n in (1, 2):
        total = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += t.numel() * t.element_size()
            return t
        try:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                meta(torch.zeros(n, *shape, device="meta", requires_grad=True))
        except (RuntimeError, NotImplementedError, TypeError):
            return None
        counts.append(total)
    return max(0, counts[1] - counts[0])


def check_batch_fits(nets: list[tuple[nn.Module, tuple[int, int, int]]], batch: int, accumulate: int,
                     device: torch.device, half: bool) -> None:
    """A UserError naming the batch size that fits when a micro-batch (`batch` / `accumulate`
    patches) through `nets` (each with its input shape) would keep more activations than the
    memory available to this rank: on the CPU the machine's share of each rank a launcher started
    on it. `half`: mixed precision may keep them in 16 bits, half the fp32 count."""
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or "1")
    counted = [saved_bytes_per_patch(net, shape) for net, shape in nets]
    per_patch = sum(c for c in counted if c) // (2 if half else 1)
    micro = batch // max(1, accumulate)
    if not per_patch:
        return
    available = least_over_ranks(free_memory(device) // (max(1, ranks_here) if device.type == "cpu" else 1),
                                 device)
    if per_patch * micro <= available:
        return
    if per_patch > available:  # not one patch fits: a smaller batch cannot help
        raise UserError(f"one patch of data.patch_size keeps at least {per_patch / 1e9:.1f} GB of activations for "
                        f"the backward pass, more than the {available / 1e9:.1f} GB available on {device.type}; "
                        "lower data.patch_size")
    fits = max(1, available // per_patch) * max(1, accumulate)
    raise UserError(f"data.batch_size = {batch} keeps at least {per_patch * micro / 1e9:.1f} GB of activations "
                    f"for the backward pass of each of its {accumulate} micro-batch(es) ({per_patch / 1e6:.1f} "
                    f"MB a patch), more than the {available / 1e9:.1f} GB available on {device.type}; use "
                    f"data.batch_size <= {fits // 2 or 1} (half of what would just fit, for the backward pass "
                    "and the optimizer), or raise train.accumulate")


def least_over_ranks(value: int, device: torch.device) -> int:
    """The least `value` over the run's processes (collective when there are several), so that
    all of them refuse a batch, or none: one rank refusing alone (a GPU that another program
    fills, memory that changed meanwhile) left the others waiting for it, then a traceback."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return value
    box = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(box, op=dist.ReduceOp.MIN)
    return int(box.item())
