"""Shared fixtures: the real data in ../shared/data and the project's own stages."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
    ingest_mimic(DEMO, TABLE_SPEC, root / "mimic", root / "ingest_report.json", duckdb_config)
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
