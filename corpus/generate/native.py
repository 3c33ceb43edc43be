"""The engine's native attention kernels (`kernels/decode_attention.cpp`: decode
attention, and the prefill's causal softmax): compiled on first use with the
machine's C++ compiler for this CPU (`-march=native`, under a second), kept in
a per-user cache keyed by the source, compiler and CPU flags, and loaded with
ctypes.

Optional by design: where there is no compiler, the CPU lacks AVX512-BF16 (the
source then stops the build with an #error), or `CORPUS_NATIVE_ATTENTION=0` is
set, `decode_attention()` returns None, `kernel_status()` says why, and the
engine keeps its torch path. Which path ran is part of the transformers
backend's fingerprint (the two round differently), so cached samples of one are
never served for the other.

The library links the OpenMP runtime torch has already loaded (`libgomp.so.1`,
same soname): one thread pool, not two competing for the cores.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from corpus.cpu import cpuinfo_field

__all__ = ["DecodeKernels", "decode_attention", "kernel_status", "ENV_SWITCH"]

ENV_SWITCH = "CORPUS_NATIVE_ATTENTION"
_SOURCE = Path(__file__).with_name("kernels") / "decode_attention.cpp"
_FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17", "-fno-math-errno")


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "remedi-corpus" / "kernels"


def _build(compiler: str) -> Path:
    """The compiled library for this source, compiler and CPU: built once, atomically
    (a temporary file renamed into place), so concurrent first uses are safe."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256("\0".join([_SOURCE.read_text(), version, " ".join(_FLAGS), platform.machine(),
                                    cpuinfo_field("flags") or platform.processor()]).encode()).hexdigest()[:16]
    target = _cache_root() / f"decode_attention-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=".decode_attention-", suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([compiler, *_FLAGS, str(_SOURCE), "-o", temporary], capture_output=True, text=True,
                       check=True)
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return target


class DecodeKernels:
    """The library's two entry points (see the source for their arguments):
    `level` attends rows to a level's chunks of shared prompt KV; `finish` attends
    them to their own generated tokens and merges every part into the output;
    `causal_softmax` normalises a prefill query block's scores in place."""

    def __init__(self, level, finish, causal_softmax):
        self.level, self.finish, self.causal_softmax = level, finish, causal_softmax

    @staticmethod
    def pointers(tensors) -> ctypes.Array:
        """A C array of the tensors' data pointers (kept alive by the caller)."""
        return (ctypes.c_void_p * max(1, len(tensors)))(*[t.data_ptr() for t in tensors])


@functools.lru_cache(maxsize=1)
def _load() -> tuple[DecodeKernels | None, str]:
    """(the kernels, 'ok') or (None, why not): tried once per process."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return None, f"{ENV_SWITCH}=0"
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        return None, "no C++ compiler (g++) on PATH"
    import torch  # noqa: F401  (loads the OpenMP runtime the library links to: one pool)

    try:
        library = ctypes.CDLL(str(_build(compiler)))
    except subprocess.CalledProcessError as error:
        lines = (error.stderr or "").strip().splitlines()
        errors = [line for line in lines if "error" in line] or lines
        return None, f"{compiler} failed: {errors[0] if errors else error}"
    except (OSError, RuntimeError) as error:  # RuntimeError: no home folder for the cache
        return None, f"cannot build or load the kernels: {error}"
    pointer, integer, real = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
    level = library.corpus_level_attend
    level.restype = integer
    level.argtypes = [pointer, pointer, pointer, integer, integer, integer, integer, pointer, real, integer,
                      pointer, pointer, pointer, integer, pointer, pointer, pointer, pointer, pointer, pointer,
                      integer]
    finish = library.corpus_decode_finish
    finish.restype = integer
    finish.argtypes = [pointer, pointer, integer, integer, integer, integer, integer, pointer, real, integer,
                       integer, pointer, pointer, pointer, integer]
    softmax = library.corpus_causal_softmax
    softmax.restype = integer
    softmax.argtypes = [pointer, integer, integer, integer, integer, integer, integer]
    return DecodeKernels(level, finish, softmax), "ok"


def decode_attention() -> DecodeKernels | None:
    """The kernels, or None where they cannot run here (see kernel_status)."""
    return _load()[0]


def kernel_status() -> str:
    """'ok', or why the kernels are not in use."""
    return _load()[1]
