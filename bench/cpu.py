"""Which CPU a benchmark ran on, and which of the engine's paths that CPU takes.

The same benchmark gives figures an order of magnitude apart on the two CPU
families these machines have (AVX512-BF16: bf16 compute, the native kernels,
packed linears; AVX2 only: float32, torch attention): a figure without its CPU
cannot be compared. Every benchmark prints `cpu_report()` first and stores
`cpu_info()` with its JSON results.
"""

from __future__ import annotations

import os

# The one /proc/cpuinfo reader (also behind `sample.backend: auto`), re-exported here
# for the benchmarks and tests/conftest.py.
from corpus.cpu import cpu_flags, cpu_model  # noqa: F401

# The flags that decide the path: "auto" dtype is bf16 with avx512_bf16 or AMX
# (hf_sampler.resolve_dtype); the native kernels need avx512f, avx512bw and
# avx512_bf16 (kernels/decode_attention.cpp); without AVX-512 oneDNN packs no bf16
# weights; avx2 is the floor of the fp32 path.
DECIDING_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_info() -> dict:
    """Model name, logical CPUs, the deciding flags present, and the paths the engine takes here."""
    flags = cpu_flags()
    info = {
        "model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "flags": {flag: flag in flags for flag in DECIDING_FLAGS},
    }
    try:  # the project's own decisions, as the sample stage would make them
        from corpus.generate import native
        from corpus.generate.hf_sampler import resolve_dtype

        info["auto_dtype"] = resolve_dtype("auto")
        info["native_kernels"] = native.kernel_status()
    except ImportError as error:  # run outside the venv: the flags still say a lot
        info["auto_dtype"] = info["native_kernels"] = f"unknown ({error})"
    return info


def cpu_report(info: dict | None = None) -> str:
    """One line: 'CPU <model> (<n> logical): avx2 yes, avx512f no, ...; auto dtype float32; native kernels: <why>'."""
    info = info or cpu_info()
    flags = ", ".join(f"{flag} {'yes' if present else 'no'}" for flag, present in info["flags"].items())
    return (f"CPU {info['model']} ({info['logical_cpus']} logical): {flags}; auto dtype {info['auto_dtype']}; "
            f"native kernels: {info['native_kernels']}")


if __name__ == "__main__":
    print(cpu_report())
