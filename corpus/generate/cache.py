"""Content-addressed cache of generations: a request answered once is never generated again.

A request's key is sha256 over the canonical JSON of everything that decides
its output: the rendered prompt, the generator fingerprint (model identity,
backend, sampling parameters, prompt template hash) and the sample's seed.
Rows are committed to SQLite (WAL journal) as each batch finishes, so a
killed run loses at most the batch in flight; a re-run finds the rest.

The cache lives outside DVC's outs (DVC deletes a stage's outs before it
runs): by default `.cache/generations.sqlite` at the repository root, shared
by every round, experiment and shard. Caches of several hosts are joined with
`corpus cache merge` (one transaction; a key two files answer differently is an error).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from corpus.atomic import canonical_json
from corpus.errors import CorpusError, SourceError

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


_GENERATION_COLUMNS = ("text", "new_tokens", "finish_reason")


class MergeConflict(CorpusError):
    """Two cache files answer one key differently."""


def _show(values: tuple) -> str:
    return repr(values[0][:80] if isinstance(values[0], str) else values[0]) + (
        f" ({', '.join(map(str, values[1:]))})" if len(values) > 1 else "")


def _first_holding(key: str, table: str, paths: list[Path]) -> Path:
    """Which file a key already in the target came from: the target's committed rows, else an earlier source."""
    for path in paths:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)
        try:
            if db.execute(f"SELECT 1 FROM {table} WHERE key = ?", (key,)).fetchone():
                return path
        finally:
            db.close()
    return paths[0]


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

    def merge_from(self, *others: Path | str) -> int:
        """Copy every generation (and option score) of the other cache files that this one lacks,
        all of them in one transaction: a merge that fails leaves this cache as it was. A key
        found again with the same content is a duplicate and is skipped; a key found with other
        content is a MergeConflict naming the key and both files (the key says the same
        generator, prompt and seed answered; two answers mean a non-deterministic backend or a
        corrupt file, and neither may silently win). Returns how many generations were added."""
        before = self.count()
        with self._db:  # one transaction over every source: all or nothing
            for index, other in enumerate(others):
                for table, columns in (("generations", _GENERATION_COLUMNS), ("option_scores", ("scores",))):
                    self._merge_table(Path(other), table, columns, [Path(o) for o in others[:index]])
        return self.count() - before

    def _merge_table(self, other: Path, table: str, columns: tuple[str, ...], earlier: list[Path]) -> None:
        names = ", ".join(("key",) + columns)
        try:
            source = sqlite3.connect(f"file:{other}?mode=ro", uri=True, timeout=60)
            rows = source.execute(f"SELECT {names} FROM {table} ORDER BY key")
        except sqlite3.DatabaseError as error:
            if "source" in locals():
                source.close()
            raise SourceError(f"{other}: not a generation cache ({error}); nothing was merged into {self.path}") from None
        insert = f"INSERT INTO {table} ({names}) VALUES ({','.join('?' * (len(columns) + 1))})"
        try:
            while chunk := rows.fetchmany(1000):
                marks = ",".join("?" * len(chunk))
                have = {row[0]: tuple(row[1:]) for row in self._db.execute(
                    f"SELECT {names} FROM {table} WHERE key IN ({marks})", [row[0] for row in chunk])}
                for row in chunk:
                    if row[0] in have and have[row[0]] != tuple(row[1:]):
                        origin = _first_holding(row[0], table, [self.path] + earlier)
                        raise MergeConflict(
                            f"{table} key {row[0]}: {origin} holds {_show(have[row[0]])}, {other} holds "
                            f"{_show(tuple(row[1:]))}; nothing was merged into {self.path}")
                self._db.executemany(insert, [row for row in chunk if row[0] not in have])
        finally:
            source.close()

    def count(self) -> int:
        return self._db.execute("SELECT count(*) FROM generations").fetchone()[0]

    def close(self) -> None:
        self._db.close()
