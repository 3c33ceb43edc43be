"""Sampling across hosts: n shards, each sampled in its own cache, merged, give the file of one run
over all questions; the merge of caches is all or nothing and never lets one answer overwrite another."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from pathlib import Path

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from corpus.cli import app
from corpus.generate.cache import Generation, GenerationCache, MergeConflict
from corpus.errors import SourceError
from tests.conftest import REPO
from tests.tiny_model import build_tiny_model

SHARDS = 3
LIMIT = 10  # of 12 questions: the shards must split the limited set, not each take its own first 10
K = 2


def _questions(folder: Path) -> Path:
    rows = [
        {
            # Question ids are hex digests in the pipeline; the shard is read from their first 8 digits.
            "id": hashlib.sha256(f"q{i}".encode()).hexdigest()[:16],
            "task": "mortality" if i % 2 else "readmission",
            "context": f"Visit 0:\nConditions:\n1. Sepsis\n2. Acute kidney failure\nMedications:\n1. Heparin {i}",
            "question": "Will the patient die in hospital during their next admission? Answer Yes or No.",
            "options": ["Yes", "No"],
            "answer": "No" if i % 3 else "Yes",
        }
        for i in range(12)
    ]
    folder.mkdir(parents=True)
    pl.DataFrame(rows).write_parquet(folder / "train.parquet")
    return folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("shard-inputs")
    return build_tiny_model(root), _questions(root / "questions")


def _host(root: Path, model: Path, questions: Path) -> Path:
    """A checkout on one host: its params.yaml, its questions, its own cache (.cache/generations.sqlite)."""
    (root / "data").mkdir(parents=True)
    shutil.copytree(questions, root / "data" / "questions")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["rounds"] = {"1": {"generator": str(model)}}
    params["sample"].update({"backend": "transformers", "limit": LIMIT, "k": K, "max_new_tokens": 24,
                             "temperature": 1.0, "tasks": None})
    params["sample"]["transformers"].update({"threads": 1})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def _sample(host: Path, monkeypatch, **shard) -> dict:
    from corpus.stages import run_sample

    monkeypatch.chdir(host)  # the stage's paths are relative to the repository root, as under dvc repro
    return run_sample(1, host / "params.yaml", **shard)


def test_shards_merged_give_the_file_of_one_run(tmp_path, monkeypatch, inputs):
    model, questions = inputs
    single = _host(tmp_path / "single", model, questions)
    whole = _sample(single, monkeypatch)
    assert whole["generation"]["generated"] == LIMIT * K

    # A Slurm array on one shared checkout: task i runs shard i with a cache of its own.
    cluster = _host(tmp_path / "cluster", model, questions)
    monkeypatch.chdir(cluster)
    runner, caches, parts = CliRunner(), [tmp_path / f"cache-{i}.sqlite" for i in range(SHARDS)], []
    for i in range(SHARDS):
        result = runner.invoke(app, ["sample", "--round", "1", "--shard", str(i), "--num-shards", str(SHARDS),
                                     "--cache", str(caches[i])])
        assert result.exit_code == 0, result.output
        parts.append(pl.read_parquet(cluster / f"data/rounds/1/samples.shard-{i}-of-{SHARDS}.parquet"))
        assert _count(caches[i]) == parts[-1].height > 0
    assert not (cluster / "data/rounds/1/samples.parquet").exists()
    assert not (cluster / ".cache/generations.sqlite").exists()
    # The shards split the questions of the unsharded run: none twice, none missing.
    ids = [set(p["question_id"]) for p in parts]
    assert sum(map(len, ids)) == len(set().union(*ids)) == LIMIT

    # Their caches merged into the checkout's, the unsharded stage generates nothing.
    result = runner.invoke(app, ["cache", "merge", *map(str, caches)])
    assert result.exit_code == 0, result.output
    assert f"{LIMIT * K} generation(s) added" in " ".join(result.output.split())
    merged = _sample(cluster, monkeypatch)
    assert merged["generation"]["generated"] == 0 and merged["generation"]["cached"] == LIMIT * K
    assert ((cluster / "data/rounds/1/samples.parquet").read_bytes()
            == (single / "data/rounds/1/samples.parquet").read_bytes())
    assert pl.concat(parts).sort("id").equals(pl.read_parquet(single / "data/rounds/1/samples.parquet"))


def _cache(path: Path, items: dict[str, Generation]) -> Path:
    cache = GenerationCache(path)
    cache.put_many(items)
    cache.close()
    return path


def _count(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT count(*) FROM generations").fetchone()[0]


def _rows(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT * FROM generations ORDER BY key").fetchall()


def test_a_key_answered_twice_differently_stops_the_whole_merge(tmp_path):
    target = _cache(tmp_path / "target.sqlite", {"k1": Generation("a", 1, "eos")})
    same = _cache(tmp_path / "same.sqlite", {"k1": Generation("a", 1, "eos"), "k2": Generation("b", 2, "eos")})
    other = _cache(tmp_path / "other.sqlite", {"k2": Generation("B!", 2, "eos"), "k3": Generation("c", 3, "eos")})
    before = _rows(target)

    cache = GenerationCache(target)
    with pytest.raises(MergeConflict) as raised:
        cache.merge_from(same, other)  # `same` alone would merge (k1 duplicate, k2 new); `other` conflicts on k2
    message = str(raised.value)
    # The key, the file whose answer came first (an earlier source, not yet committed) and the other file.
    assert "key k2" in message and f"{same} holds 'b'" in message and f"{other} holds 'B!'" in message
    cache.close()
    assert _rows(target) == before  # nothing of `same` either: all or nothing

    # Against the target's own rows, through the CLI: exit 1, the target named.
    clash = _cache(tmp_path / "clash.sqlite", {"k1": Generation("z", 1, "eos")})
    result = CliRunner().invoke(app, ["cache", "merge", str(same), str(clash), "--into", str(target)])
    assert result.exit_code == 1 and _rows(target) == before
    with pytest.raises(MergeConflict, match=f"key k1: {target} holds 'a'"):
        GenerationCache(target).merge_from(clash)

    # Duplicates are skipped, new keys added, in one go.
    cache = GenerationCache(target)
    assert cache.merge_from(same, same) == 1
    assert cache.get_many(["k1", "k2"]) == {"k1": Generation("a", 1, "eos"), "k2": Generation("b", 2, "eos")}
    cache.close()


def test_a_file_that_is_not_a_cache_is_named(tmp_path):
    target = _cache(tmp_path / "target.sqlite", {"k1": Generation("a", 1, "eos")})
    good = _cache(tmp_path / "good.sqlite", {"k2": Generation("b", 2, "eos")})
    bogus = tmp_path / "notes.sqlite"
    bogus.write_text("not a database")
    cache = GenerationCache(target)
    with pytest.raises(SourceError, match=f"{bogus}: not a generation cache"):
        cache.merge_from(good, bogus)
    assert cache.count() == 1
    cache.close()
