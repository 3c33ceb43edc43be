"""The running CPU as /proc/cpuinfo describes it: model name, feature flags, family.

One reader for the whole project: the benchmarks' CPU line (bench/cpu.py), the
tests' CPU-feature skips (tests/conftest.py) and `sample.backend: auto`
(corpus/generate/auto_backend.py) all read the flags here.
"""

from __future__ import annotations

import platform
from pathlib import Path

# CPU families whose measured engine speeds differ by an order of magnitude:
# native bf16 (AVX512-BF16 or AMX), AVX2 only (float32), anything else.
FAMILIES = ("avx512_bf16", "avx2", "other")


def cpuinfo_field(name: str) -> str:
    """The first /proc/cpuinfo line starting with `name`, after its colon ('' where unreadable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(name):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return ""


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as /proc/cpuinfo lists them (empty where unreadable)."""
    return frozenset(cpuinfo_field("flags").split())


def cpu_model() -> str:
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_family(flags: frozenset[str] | None = None) -> str:
    """'avx512_bf16' (native bf16 multiply: AVX512-BF16 or AMX), 'avx2', or 'other'."""
    flags = cpu_flags() if flags is None else flags
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        return "avx512_bf16"
    if "avx2" in flags:
        return "avx2"
    return "other"
