"""Content-addressed cache of generations: a request answered once is never generated again.

A request's key is sha256 over the canonical JSON of everything that decides
its output: the rendered prompt, the generator fingerprint (model identity,
backend, sampling parameters, prompt template hash) and the sample's seed.
Rows are committed to SQLite (WAL journal) as each batch finishes, so a
killed run loses at most the batch in flight; a re-run finds the rest.

The cache lives outside DVC's outs (DVC deletes a stage's outs before it
runs): by default `.cache/generations.sqlite` at the repository root, shared
by every round, experiment and shard. Caches of several hosts are joined with
`corpus cache merge`.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from corpus.atomic import canonical_json

SCHEMA = """
CREATE TABLE IF NOT EXISTS generations (
    key TEXT PRIMARY KEY,
    text TEXT NOT NULL,
    new_tokens INTEGER NOT NULL,
    finish_reason TEXT NOT NULL
) WITHOUT ROWID;
-- Option log-probabilities of a generation (the parser's last fallback), keyed like it.
CREATE TABLE IF NOT EXISTS option_scores (
    key TEXT PRIMARY KEY,
    scores TEXT NOT NULL
) WITHOUT ROWID;
"""


def request_key(prompt: str, fingerprint: dict, seed: int) -> str:
    return hashlib.sha256(canonical_json({"prompt": prompt, "generator": fingerprint, "seed": seed}).encode()).hexdigest()


@dataclass(frozen=True)
class Generation:
    text: str
    new_tokens: int
    finish_reason: str  # eos | length


class GenerationCache:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60)
        # WAL: readers never block the writer, and a commit is durable once it returns.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def get_many(self, keys: Iterable[str]) -> dict[str, Generation]:
        found: dict[str, Generation] = {}
        keys = list(keys)
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, text, tokens, reason in self._db.execute(
                f"SELECT key, text, new_tokens, finish_reason FROM generations WHERE key IN ({marks})", chunk
            ):
                found[key] = Generation(text, tokens, reason)
        return found

    def put_many(self, items: dict[str, Generation]) -> None:
        """Store finished generations in one transaction (first writer wins: a key never changes)."""
        with self._db:
            self._db.executemany(
                "INSERT OR IGNORE INTO generations (key, text, new_tokens, finish_reason) VALUES (?, ?, ?, ?)",
                [(k, g.text, g.new_tokens, g.finish_reason) for k, g in items.items()],
            )

    def get_scores(self, key: str) -> list[float] | None:
        row = self._db.execute("SELECT scores FROM option_scores WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put_scores(self, key: str, scores: list[float]) -> None:
        with self._db:
            self._db.execute("INSERT OR IGNORE INTO option_scores VALUES (?, ?)", (key, json.dumps(scores)))

    def merge_from(self, other: Path | str) -> int:
        """Copy every generation of another cache file that this one lacks; returns how many."""
        before = self.count()
        self._db.execute("ATTACH DATABASE ? AS other", (str(other),))
        try:
            with self._db:
                self._db.execute("INSERT OR IGNORE INTO generations SELECT * FROM other.generations")
                self._db.execute("INSERT OR IGNORE INTO option_scores SELECT * FROM other.option_scores")
        finally:
            self._db.execute("DETACH DATABASE other")
        return self.count() - before

    def count(self) -> int:
        return self._db.execute("SELECT count(*) FROM generations").fetchone()[0]

    def close(self) -> None:
        self._db.close()
