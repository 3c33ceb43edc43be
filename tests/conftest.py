"""Shared fixtures: the real data in ../shared/data and the project's own stages."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.cpu import cpu_flags, cpu_model  # the reader of /proc/cpuinfo the benchmarks' CPU line uses

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
DEMO = SHARED_DATA / "mimic-iv-demo"
SEPSIS = SHARED_DATA / "sepsis-challenge-2019"
TABLE_SPEC = REPO / "schemas" / "mimic_tables.yaml"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

requires_demo = pytest.mark.skipif(not DEMO.is_dir(), reason=f"{DEMO} not found")


@pytest.fixture(scope="session")
def duckdb_config():
    from corpus.config import DuckDBConfig

    return DuckDBConfig(memory_limit="2GB", threads=2)


@pytest.fixture(scope="session")
def demo_warehouse(tmp_path_factory, duckdb_config) -> Path:
    """The demo ingested once per test session: data/warehouse/mimic equivalent."""
    if not DEMO.is_dir():
        pytest.skip(f"{DEMO} not found")
    from corpus.ingest.mimic import ingest_mimic

    root = tmp_path_factory.mktemp("warehouse")
    ingest_mimic(DEMO, TABLE_SPEC, root / "mimic", root / "ingest_report.json", duckdb_config,
                 details_path=root / "ingest_details.json")
    return root / "mimic"


@pytest.fixture(scope="session")
def demo_cohorts(tmp_path_factory, demo_warehouse, duckdb_config):
    """Cohorts of the demo under each label convention: {convention: folder}."""
    from corpus.cohorts import build_cohorts
    from corpus.config import CohortConfig

    folders = {}
    for convention in ("kare", "pyhealth"):
        root = tmp_path_factory.mktemp(f"cohorts-{convention}")
        build_cohorts(
            demo_warehouse, root / "cohorts", root / "summary.json", CohortConfig(label_convention=convention),
            duckdb_config,
        )
        folders[convention] = root / "cohorts"
    return folders


# --- the CPU the suite runs on ------------------------------------------------------------
# Machines of two families run this suite (FACTS.md): AVX512-BF16 (Zen 4, Sapphire
# Rapids) and AVX2 only (Zen 3). A test that needs a CPU feature skips where it is
# missing and says which; the path such a CPU takes is forced and tested everywhere.

# The flags that decide the sampler's path: bf16 compute ("auto" dtype), the native
# kernels (kernels/decode_attention.cpp's #error), oneDNN's packed bf16 linears.
DECIDING_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_bf16", "amx_bf16")


def cpu_summary() -> str:
    """'<model>: avx2 avx512f ... (lacks amx_bf16)': for skip reasons and reports."""
    flags = cpu_flags()
    have = [f for f in DECIDING_FLAGS if f in flags]
    lacks = [f for f in DECIDING_FLAGS if f not in flags]
    return f"{cpu_model()}: {' '.join(have) or 'none of ' + ', '.join(DECIDING_FLAGS)}" + (
        f" (lacks {', '.join(lacks)})" if lacks else "")


def requires_cpu_flags(*flags: str, why: str):
    """Skip unless the CPU has every one of `flags`; the reason names what is missing."""
    missing = [f for f in flags if f not in cpu_flags()]
    return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(flags)} ({why}); this CPU lacks "
                                                    f"{', '.join(missing)} [{cpu_summary()}]")


@dataclass(frozen=True)
class EnginePath:
    """How the sampler runs in one variant of a test: `dtype` for load_model /
    TransformersGenerator, `env` for a child process (the stage)."""

    name: str
    dtype: str
    env: dict


# The path of a CPU without AVX512-BF16, forced: float32 ("auto" there), the torch
# attention (the kernels cannot build there), hence no packed bf16 linears either.
FALLBACK_ENV = {"CORPUS_NATIVE_ATTENTION": "0"}


@pytest.fixture(params=["cpu-default", "fallback"])
def engine_path(request, monkeypatch):
    """Each test that takes it runs twice: on the path this CPU picks by itself
    (dtype auto, native kernels where they build) and on the fallback path, forced,
    so that an AVX512 machine proves the AVX2 path too. Where the CPU's own path is
    the fallback already, the second run would repeat the first: skipped."""
    from corpus.generate import native
    from corpus.generate.hf_sampler import resolve_dtype

    if request.param == "cpu-default":
        yield EnginePath("cpu-default", "auto", {})
        return
    if resolve_dtype("auto") == "float32" and native.decode_attention() is None:
        pytest.skip(f"this CPU's own path is the fallback already (float32; kernels: {native.kernel_status()}) "
                    f"[{cpu_summary()}]")
    for name, value in FALLBACK_ENV.items():
        monkeypatch.setenv(name, value)
    native._load.cache_clear()  # the kernels are looked up once per process: again, with the switch
    try:
        yield EnginePath("fallback", "float32", dict(FALLBACK_ENV))
    finally:
        monkeypatch.undo()
        native._load.cache_clear()


@pytest.fixture(scope="session")
def wide_tiny_model(tmp_path_factory) -> Path:
    """The tiny test model with SmolLM2's head size (64, the native kernels' one):
    2 query heads on 1 KV head."""
    from tests.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("wide"), hidden_size=128, heads=2, kv_heads=1)
