"""Fresh git + DVC copies of this repository for the pipeline tests, and the data stages
(ingest, cohorts, registry, questions) reproduced once per test run in one of them.

`dvc repro questions` costs four stage processes (each importing polars, DuckDB and Great
Expectations); test_loop_e2e needs its outputs as the start of the loop and
test_pipeline_dvc needs an independent repro to compare hashes with. Both read the one
repro built by `data_stages_repo` (under pytest-xdist: built by whichever worker asks first,
the others wait: tests.conftest.built_once) and work in copies of it, so nothing they change leaks
into another test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import DEMO, REPO, SEPSIS

# The first 300 registry stays: enough for every masked_value feature's questions, and a
# tenth of the registry stage's reading.
REGISTRY_STAYS = 300
FIRST_REPRO_LOG = "first_repro.log"


def sh(args: list[str], cwd: Path, stdout_only: bool = False) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout if stdout_only else done.stdout + done.stderr


def registry_subset(folder: Path) -> Path:
    """The first REGISTRY_STAYS stays of training set B, linked in place (read, never copied)."""
    folder.mkdir(parents=True, exist_ok=True)
    for stay in sorted((SEPSIS / "training_setB").glob("*.psv"))[:REGISTRY_STAYS]:
        (folder / stay.name).symlink_to(stay)
    return folder


def clean_copy(root: Path, registry: Path) -> Path:
    """A copy of this repository (tracked and unignored files, no data, metrics or dvc.lock) as a
    new git repo with DVC, reading the demo and `registry`."""
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
    params["registry"]["source"] = str(registry)
    params["masked_value"]["questions_per_feature"] = 1  # keeps the tests quick; the count is not under test
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["git", "init", "-q"], root)
    if not (root / ".dvc").is_dir():
        sh(["dvc", "init", "-q"], root)
    sh(["git", "add", "-A"], root)
    sh(["git", "commit", "-qm", "init"], root)
    return root


def build_data_stages_repo(folder: Path) -> None:
    """A clean copy whose first `dvc repro questions` has run; its output in FIRST_REPRO_LOG."""
    repo = clean_copy(folder / "repo", registry_subset(folder / "registry"))
    (folder / FIRST_REPRO_LOG).write_text(sh(["dvc", "repro", "questions"], repo))


def copy_repo(data_stages: Path, to: Path) -> Path:
    """A private copy of the shared repo (git history, DVC cache and lock, data outputs)."""
    shutil.copytree(data_stages / "repo", to, symlinks=True)
    return to
