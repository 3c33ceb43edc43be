"""The real DVC pipeline in a fresh git repo: repro, no-op repro, param change re-runs only its dependants."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml

from tests.conftest import requires_demo
from tests.dvc_repos import clean_copy, sh as _sh

pytestmark = requires_demo

DATA_STAGES = ("ingest", "cohorts", "registry", "questions")


class Pipeline(NamedTuple):
    repo: Path
    first_repro: str  # the output of its first `dvc repro questions`
    first_hashes: dict[str, str]  # the data stages' out hashes in dvc.lock after it
    first_params: str  # params.yaml then (a test changes it later)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, data_stages_repo) -> Pipeline:
    """A copy of this repository (tracked and unignored files) as a new git repo with DVC, its
    data stages reproduced once, with the same params as the shared `data_stages_repo`."""
    repo = clean_copy(tmp_path_factory.mktemp("repo") / "repo", data_stages_repo / "registry")
    first = _sh(["dvc", "repro", "questions"], repo)
    return Pipeline(repo, first, _out_hashes(repo), (repo / "params.yaml").read_text())


@pytest.fixture
def pipeline_repo(pipeline) -> Path:
    return pipeline.repo


def _only_stages(log: str) -> list[str]:
    return sorted(line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage"))


def _out_hashes(repo: Path) -> dict[str, str]:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {out["path"]: out["md5"] for stage in DATA_STAGES for out in lock[stage]["outs"]}


def test_repro_then_noop_then_param_change(pipeline, pipeline_repo):
    assert _only_stages(pipeline.first_repro) == ["cohorts", "ingest", "questions", "registry"]
    assert (pipeline_repo / "data/cohorts/mortality.parquet").exists()

    again = _sh(["dvc", "repro", "questions"], pipeline_repo)
    assert _only_stages(again) == []
    assert "Data and pipelines are up to date" in again

    params = yaml.safe_load((pipeline_repo / "params.yaml").read_text())
    params["cohorts"]["label_convention"] = "pyhealth"
    (pipeline_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = _sh(["dvc", "repro", "questions"], pipeline_repo)
    # Only what depends on the label convention: cohorts, then the questions built from them.
    assert _only_stages(changed) == ["cohorts", "questions"]
    summary = json.loads((pipeline_repo / "metrics/details/cohorts.json").read_text())
    assert summary["label_convention"] == "pyhealth"
    assert summary["tasks"]["readmission"]["by_label"]["1"] == 28
    # The DVC metric holds the headline figures, computed from those details.
    headline = json.loads((pipeline_repo / "metrics/cohorts.json").read_text())
    readmission = summary["tasks"]["readmission"]
    assert headline["tasks"]["readmission"] == {
        "samples": readmission["samples"],
        "rarest_label_share": round(min(readmission["by_label"].values()) / readmission["samples"], 4)}


# What `dvc metrics show` lists for the data stages: the headline figures only.
HEADLINE_KEYS = {
    "data/warehouse/ingest_report.json": {"rows_excluded", "invalid_values"},
    "metrics/cohorts.json": {f"tasks.{t}.{k}" for t in ("los", "mortality", "readmission")
                             for k in ("samples", "rarest_label_share")},
    "metrics/registry.json": {"stays", "sepsis_stays"},
    "metrics/questions.json": {f"by_task.{t}" for t in ("los", "masked_value", "mortality", "readmission")}
    | {f"by_split.{s}" for s in ("train", "val", "test")},
}


def _leaves(node: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in node.items():
        keys |= _leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}"}
    return keys


def test_metrics_show_lists_the_headline_figures_and_plots_render(pipeline_repo):
    _sh(["dvc", "repro", "questions"], pipeline_repo)
    shown = json.loads(_sh(["dvc", "metrics", "show", "--json"], pipeline_repo, stdout_only=True))
    files = next(iter(shown.values()))["data"]  # the workspace only (DVC 3.67 names it "")
    for path, keys in HEADLINE_KEYS.items():
        assert _leaves(files[path]["data"]) == keys, path
    # The table a user reads stays narrow: 17 columns for these stages, 5 more per sample
    # round (details elsewhere).
    assert sum(len(keys) for keys in HEADLINE_KEYS.values()) == 17
    assert (pipeline_repo / "metrics/details/questions.json").is_file()

    targets = ["metrics/plots/questions_by_task_split.csv", "metrics/plots/context_chars.csv"]
    plots = json.loads(_sh(["dvc", "plots", "show", "--json", *targets], pipeline_repo, stdout_only=True))
    assert plots.get("errors") in (None, []), plots["errors"]
    bars = plots["data"]["metrics/plots/questions_by_task_split.csv"][0]["content"]["data"]["values"]
    questions = json.loads((pipeline_repo / "metrics/questions.json").read_text())
    assert sum(int(bar["questions"]) for bar in bars) == sum(questions["by_split"].values())
    html = pipeline_repo / "plots-html"
    _sh(["dvc", "plots", "show", "-o", str(html), *targets], pipeline_repo)
    assert "questions per task and split" in (html / "index.html").read_text()


def test_two_clean_copies_give_the_same_data_hashes(pipeline, data_stages_repo):
    """Same commit, two clean copies, same params: every data artifact up to the questions has
    the same dvc.lock hash (the sample stage's outputs match only on one CPU family: README).
    The two: this module's repo as its first repro left it, and the shared one (built by its
    own `dvc repro`, maybe in another worker process)."""
    shared = data_stages_repo / "repo"
    assert (shared / "params.yaml").read_text() == pipeline.first_params  # the same params, whatever ran since
    first, second = pipeline.first_hashes, _out_hashes(shared)
    assert set(first) >= {"data/warehouse/mimic", "data/cohorts", "data/questions"}
    assert first == second
