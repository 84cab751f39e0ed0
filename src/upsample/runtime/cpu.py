"""The processor, read from /proc/cpuinfo without torch (the torch-free fast path keys its plans
by it): its name, its bf16 units, and the kind a timing or a gate verdict holds for."""

from __future__ import annotations

import platform

# the flags that decide which precision and layout run fastest (two CPUs of one name can differ)
SPEED_FLAGS = ("avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16")


def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def cpu_name() -> str:
    """The processor's model name (bench figures belong to it), else the platform's word."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def cpu_has_bf16() -> bool:
    flags = _cpuinfo()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_kind() -> str:
    """The CPU's name with its speed flags: what a timing, a gate verdict or a plan holds for (a
    cache shared by several machines, e.g. a home folder on a cluster, keeps each one's)."""
    flags = set(_cpuinfo().split())
    return " ".join([cpu_name(), *(f for f in SPEED_FLAGS if f in flags)])
