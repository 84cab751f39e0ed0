"""Counts and memory sizes as users write them ("auto", "2GB"), and the default tile pad.

Torch-free: the `image` command parses its options with these before torch is imported.
"""

from __future__ import annotations

import os
import re

from ..errors import UserError

MAX_DEFAULT_PAD = 32  # the default tile pad: the receptive field of the network, at most this

MAX_SCALE = 32
MIN_SCALE = 0.001  # a final --outscale down to one pixel of a 1000-pixel image


def check_scale(scale, what: str = "scale") -> float:
    """A scale factor from the user (`what` names the option): a positive finite number from
    MIN_SCALE to MAX_SCALE (a smaller one, 1e-9, asked bicubic for a 90 GB kernel)."""
    try:
        s = float(scale)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be a positive number, got {scale!r}") from None
    if not (s > 0 and s < float("inf")):
        raise UserError(f"{what} must be a positive number, got {scale!r}")
    if s > MAX_SCALE:
        raise UserError(f"{what} {s:g} is over the {MAX_SCALE}x this tool upscales by; use a factor of at "
                        f"most {MAX_SCALE} (a larger one in steps: run the output again)")
    if s < MIN_SCALE:
        raise UserError(f"{what} {s:g} is under the {MIN_SCALE:g} this tool resizes by; use a factor of at "
                        f"least {MIN_SCALE:g}")
    return s


MAX_COUNT = 4096  # frames or tiles in one model call: far past any memory's worth


def parse_count(text: str | int | None, flag: str) -> int | None:
    """"auto" (or None) -> None, else a whole number >= 1 (`flag` names the option in the error)."""
    if text is None or str(text) == "auto":
        return None
    if not str(text).isdigit() or int(text) < 1:
        raise UserError(f"{flag} must be auto or a whole number >= 1, got {str(text)!r}")
    if int(text) > MAX_COUNT:  # a typo: memory planning then spoke of negative megabytes
        raise UserError(f"{flag} {text} is more than {MAX_COUNT} pictures at once; give a small number "
                        "(e.g. 4) or auto")
    return int(text)


def parse_size(text: str | int | float) -> int:
    """Bytes from "2GB", "1.5G", "512MiB", "800M", "100000"; decimal and binary units."""
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?)b?\s*", str(text).lower())
    if not m:
        raise UserError(f"cannot read memory size {text!r}: write e.g. 2GB, 1.5G or 800MB")
    base = 1024 if m.group(3) else 1000
    return int(float(m.group(1)) * base ** " kmgt".index(m.group(2) or " "))


# A memory limit written without a unit under this ("1.5", "512": meant as GB, MB) is taken as
# bytes: the CLI and the API refuse it before a model loads (it failed after the run); with a unit
# ("8KB") it is meant.
MIN_UNITLESS_MEMORY = 1_000_000


def parse_memory(text: str | int | float) -> int:
    """--max-memory: bytes as `parse_size` reads them, more than none."""
    n = parse_size(text)
    if n <= 0:
        raise UserError(f"a memory limit (--max-memory, max_memory=) of {text}: no memory to work in; give a size such as 2GB")
    return n


def resident_bytes() -> int:
    """This process's resident memory now (torch-free: `batch` checks an output against
    --max-memory before any model is built)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux: peak instead of current, which errs safe
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
