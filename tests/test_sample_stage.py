"""The sample stage end to end with the tiny model: kill -9 part-way, resume, same bytes; cache reuse.

Only the run that is killed is a child process (a SIGKILL must land on the stage's own
process); the other runs call the stage's body, corpus.stages.run_sample, in this process
with the same params file and working folder (saving each its torch and Great Expectations
start-up, about 10 s of two shared cores)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from corpus.config import CohortConfig
from corpus.hashing import file_sha256
from corpus.questions.mimic import MIMIC_TASKS, build_mimic_questions
from corpus.questions.question_sets import publish_question_sets
from corpus.questions.sampling import SamplingPolicy
from tests.conftest import REPO, requires_demo
from tests.tiny_model import build_tiny_model

pytestmark = requires_demo

QUESTIONS = 10
K = 2


@pytest.fixture(scope="module")
def model_and_questions(tmp_path_factory, demo_cohorts):
    root = tmp_path_factory.mktemp("sample-inputs")
    policies = {t: SamplingPolicy() for t in MIMIC_TASKS}
    questions = build_mimic_questions(demo_cohorts["kare"], policies, CohortConfig(), 13)
    publish_question_sets(questions, policies, (0.8, 0.1, 0.1), 13, root / "questions")
    return build_tiny_model(root), root / "questions"


def _workdir(root: Path, model: Path, questions: Path, **sample) -> Path:
    (root / "data").mkdir(parents=True)
    os.symlink(questions, root / "data" / "questions")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["rounds"] = {"1": {"generator": str(model)}}
    # The transformers engine on every CPU: `auto` would pick openvino on an AVX2-only host
    # (tests/test_openvino.py covers that backend's stage runs).
    params["sample"].update({"limit": QUESTIONS, "k": K, "max_new_tokens": 48, "temperature": 1.0,
                             "backend": "transformers", **sample})
    # One question per batch (many flushes); one thread: a tiny model gains nothing from two.
    params["sample"]["transformers"].update({"max_rows": K, "threads": 1})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def _stage(workdir: Path, env: dict | None = None) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.Popen([sys.executable, str(REPO / "stages" / "sample.py"), "--round", "1"], cwd=workdir,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _run_in_process(workdir: Path, env: dict | None = None) -> None:
    """What stages/sample.py --round 1 does, in this process: run_sample in `workdir`, `env` set.
    Torch's thread count (the stage sets it) and the native kernels' switch (read once per
    process) are put back afterwards, so later tests in this worker see neither."""
    import torch

    from corpus.generate import native
    from corpus.stages import run_sample

    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        for name, value in (env or {}).items():
            patch.setenv(name, value)
        native._load.cache_clear()
        try:
            run_sample(1)
        finally:
            torch.set_num_threads(threads)
    native._load.cache_clear()


def _kill_once_cached(workdir: Path, poll_s: float = 0.005) -> int:
    """Start the stage, SIGKILL it as soon as its first batch is in the cache; the samples cached then."""
    process = _stage(workdir)
    deadline = time.monotonic() + 300
    while _cached(workdir) == 0 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(poll_s)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return _cached(workdir)


def _finish(process: subprocess.Popen) -> None:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output


def _cached(workdir: Path) -> int:
    path = workdir / ".cache" / "generations.sqlite"
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path, timeout=1) as db:
            return db.execute("SELECT count(*) FROM generations").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def _stats(workdir: Path) -> dict:
    """Everything the stage counted (metrics/details/); the DVC metrics file holds its headline."""
    return json.loads((workdir / "metrics" / "details" / "sample-1.json").read_text())


def _set_dtype(workdir: Path, dtype: str) -> None:
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    params["sample"]["transformers"]["dtype"] = dtype
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_killed_run_resumes_to_the_same_bytes(tmp_path, model_and_questions):
    model, questions = model_and_questions
    whole = _workdir(tmp_path / "whole", model, questions)
    _run_in_process(whole)
    total = QUESTIONS * K
    assert _stats(whole)["generation"]["generated"] == total
    # What `dvc metrics show` lists: accuracy, overall and per task; the rest is in the details.
    headline = json.loads((whole / "metrics/sample-1.json").read_text())
    details = _stats(whole)
    assert headline == {"accuracy": details["accuracy"],
                        "by_task": {t: {"accuracy": e["accuracy"]} for t, e in details["by_task"].items()}}
    plotted = (whole / "metrics/plots/sample-1_accuracy.csv").read_text().splitlines()
    assert plotted[0] == "task,accuracy,samples" and len(plotted) == 1 + len(details["by_task"])

    killed = _workdir(tmp_path / "killed", model, questions)
    done_before_kill = _kill_once_cached(killed)
    assert 0 < done_before_kill < total, "the kill should land part-way"
    assert not (killed / "data/rounds/1/samples.parquet").exists()  # no half-written artifact

    _run_in_process(killed)  # the resumed run: a new process would read the same cache file
    generation = _stats(killed)["generation"]
    assert generation["cached"] == done_before_kill
    assert generation["generated"] == total - done_before_kill  # only what was missing
    assert file_sha256(killed / "data/rounds/1/samples.parquet") == file_sha256(whole / "data/rounds/1/samples.parquet")

    # A downstream parameter changes: the stage (re-run anyway) generates nothing.
    params = yaml.safe_load((killed / "params.yaml").read_text())
    params["pairs"]["max_per_question"] = 1
    (killed / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run_in_process(killed)
    assert _stats(killed)["generation"]["generated"] == 0
    frame = pl.read_parquet(killed / "data/rounds/1/samples.parquet")
    assert frame.height == total and frame["question_id"].n_unique() == QUESTIONS
    assert sorted(frame["k_index"].unique().to_list()) == list(range(K))


def test_the_fallback_path_samples_apart_from_this_cpus_own(tmp_path, model_and_questions):
    """The stage as a CPU without AVX512-BF16 runs it (float32, native kernels off), forced
    here: its fingerprint says so, and this CPU's own path (dtype auto) reuses those
    samples from the cache only where it is the same path."""
    from corpus.generate.hf_sampler import resolve_dtype
    from tests.conftest import FALLBACK_ENV

    model, questions = model_and_questions
    work = _workdir(tmp_path / "fallback", model, questions, limit=4)
    _set_dtype(work, "float32")
    _run_in_process(work, env=FALLBACK_ENV)
    fallback = _stats(work)
    assert (fallback["generator"]["dtype"], fallback["generator"]["decode_attention"]) == ("float32", "torch")
    assert fallback["generation"]["generated"] == 4 * K
    _set_dtype(work, "auto")
    _run_in_process(work)
    own = _stats(work)
    assert own["generator"]["dtype"] == resolve_dtype("auto")
    same_path = own["generator"] == fallback["generator"]
    assert same_path == (resolve_dtype("auto") == "float32")  # the tiny model's heads never take the kernels
    assert own["generation"]["generated"] == (0 if same_path else 4 * K)
