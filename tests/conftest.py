"""Shared fixtures: the real data in ../shared/data and the project's own stages."""

from __future__ import annotations

import fcntl
import os
import shutil
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


def built_once(tmp_path_factory, worker_id: str, name: str, build) -> Path:
    """`build(folder)` run once per test run, its folder shared by every xdist worker.

    Built in place (what it builds may record its own absolute paths, as DVC deps do) and
    marked complete last, so a worker that failed part-way leaves nothing another would
    take for finished: the next one clears the folder and builds again."""
    if worker_id == "master":  # no xdist: this process is the only reader
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    shared = tmp_path_factory.getbasetemp().parent  # the run's folder, above every worker's own
    folder, done = shared / name, shared / f"{name}.done"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this worker dies
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def duckdb_config():
    from corpus.config import DuckDBConfig

    return DuckDBConfig(memory_limit="2GB", threads=2)


@pytest.fixture(scope="session")
def demo_warehouse(tmp_path_factory, duckdb_config, worker_id) -> Path:
    """The demo ingested once per test run (every xdist worker reads the one copy; read-only):
    data/warehouse/mimic equivalent."""
    if not DEMO.is_dir():
        pytest.skip(f"{DEMO} not found")
    from corpus.ingest.mimic import ingest_mimic

    def ingest(root: Path) -> None:
        ingest_mimic(DEMO, TABLE_SPEC, root / "mimic", root / "ingest_report.json", duckdb_config,
                     details_path=root / "ingest_details.json")

    return built_once(tmp_path_factory, worker_id, "warehouse", ingest) / "mimic"


@pytest.fixture(scope="session")
def data_stages_repo(tmp_path_factory, worker_id) -> Path:
    """A fresh git + DVC copy of this repository after its first `dvc repro questions`, built
    once per test run (tests/dvc_repos.py): {folder}/repo, {folder}/registry. Read-only:
    tests that change it work in a copy (tests.dvc_repos.copy_repo)."""
    if not (DEMO.is_dir() and SEPSIS.is_dir()):
        pytest.skip(f"{DEMO} or {SEPSIS} not found")
    from tests.dvc_repos import build_data_stages_repo

    return built_once(tmp_path_factory, worker_id, "data-stages", build_data_stages_repo)


@pytest.fixture(scope="session")
def demo_cohorts(tmp_path_factory, demo_warehouse, duckdb_config, worker_id):
    """Cohorts of the demo under each label convention, built once per test run (read-only):
    {convention: folder}."""
    from corpus.cohorts import build_cohorts
    from corpus.config import CohortConfig

    conventions = ("kare", "pyhealth")

    def build(root: Path) -> None:
        for convention in conventions:
            build_cohorts(demo_warehouse, root / convention / "cohorts", root / convention / "summary.json",
                          CohortConfig(label_convention=convention), duckdb_config)

    root = built_once(tmp_path_factory, worker_id, "cohorts", build)
    return {convention: root / convention / "cohorts" for convention in conventions}


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


# --- scheduling under pytest-xdist ------------------------------------------------------
# `make test` runs `-n 3 --dist loadfile --no-loadscope-reorder`: each test file is one
# worker's unit (its module fixtures are built once), handed out in collection order. These
# files take most of the suite's time, the first by far (a two-round `dvc repro`, a chain of
# stage processes no worker can share); sent first, longest first, they start at once and the
# many short files fill the workers around them. Order only: no test depends on it.
LONGEST_FIRST = ("test_loop_e2e.py", "test_openvino.py", "test_sample_stage.py", "test_pipeline_dvc.py",
                 "test_synth.py", "test_baseline.py", "test_train.py", "test_registry.py", "test_openai_pool.py",
                 "test_hf_sampler.py", "test_leaks.py", "test_ingest.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: place for place, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
