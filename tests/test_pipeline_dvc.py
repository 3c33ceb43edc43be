"""The real DVC pipeline in a fresh git repo: repro, no-op repro, param change re-runs only its dependants."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import DEMO, REPO, SEPSIS, requires_demo

pytestmark = requires_demo


def _sh(args: list[str], cwd: Path, stdout_only: bool = False) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout if stdout_only else done.stdout + done.stderr


@pytest.fixture(scope="module")
def pipeline_repo(tmp_path_factory) -> Path:
    """A copy of this repository (tracked and unignored files) as a new git repo with DVC."""
    return _clean_copy(tmp_path_factory.mktemp("repo"))


def _clean_copy(root: Path) -> Path:
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout.split()
    for name in listed:
        if name.startswith(("data/", "metrics/")) or name == "dvc.lock":
            continue
        source = REPO / name
        if source.is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["mimic"]["source"] = str(DEMO)
    params["registry"]["source"] = str(SEPSIS / "training_setB")
    params["masked_value"]["questions_per_feature"] = 2  # keeps the test quick; the count is not under test
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _sh(["git", "init", "-q"], root)
    if not (root / ".dvc").is_dir():
        _sh(["dvc", "init", "-q"], root)
    _sh(["git", "add", "-A"], root)
    _sh(["git", "commit", "-qm", "init"], root)
    return root


def _only_stages(log: str) -> list[str]:
    return sorted(line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage"))


def test_repro_then_noop_then_param_change(pipeline_repo):
    first = _sh(["dvc", "repro", "questions"], pipeline_repo)
    assert _only_stages(first) == ["cohorts", "ingest", "questions", "registry"]
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
    import json

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
    import json

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


DATA_STAGES = ("ingest", "cohorts", "registry", "questions")


def _out_hashes(repo: Path) -> dict[str, str]:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {out["path"]: out["md5"] for stage in DATA_STAGES for out in lock[stage]["outs"]}


def test_two_clean_copies_give_the_same_data_hashes(pipeline_repo, tmp_path):
    """Same commit, two clean copies, same params: every data artifact up to the questions has
    the same dvc.lock hash (the sample stage's outputs match only on one CPU family: README)."""
    _sh(["dvc", "repro", "questions"], pipeline_repo)  # a no-op when an earlier test ran it
    other = _clean_copy(tmp_path / "other")
    shutil.copy2(pipeline_repo / "params.yaml", other / "params.yaml")  # the same params, whatever ran before
    _sh(["dvc", "repro", "questions"], other)
    first, second = _out_hashes(pipeline_repo), _out_hashes(other)
    assert set(first) >= {"data/warehouse/mimic", "data/cohorts", "data/questions"}
    assert first == second
