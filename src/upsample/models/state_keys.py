"""Reading a state dict's layout from its tensor names and shapes: the helpers that each
architecture's `detect` and `rename_foreign` share (see checkpoint.detect_arch)."""

from __future__ import annotations

import re

import torch

# What a refusal of another project's network suggests: every runtime here runs an .onnx export
ONNX_HINT = "or export it to .onnx (runs with --model file.onnx)"


def count_indices(keys, pattern: str) -> int:
    """How many distinct values the first group of `pattern` takes over `keys` (e.g. blocks)."""
    rx = re.compile(pattern)
    return len({m.group(1) for k in keys if (m := rx.match(k))})


def shape(state: dict[str, torch.Tensor], key: str) -> tuple:
    """The shape of `state[key]` as a plain tuple; KeyError when the tensor is missing."""
    return tuple(state[key].shape)


def rename_keys(state: dict, rules: list[tuple[str, str]]) -> dict:
    """`state` with every name rewritten by the (regex, replacement) rules, applied in order."""
    out = {}
    for k, v in state.items():
        for pat, rep in rules:
            k = re.sub(pat, rep, k)
        out[k] = v
    return out
