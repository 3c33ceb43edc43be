"""Where a version's artifacts lie under a root folder, and what dvc.lock says about them.

A version is a folder laid out as the pipeline writes it (the repository's
work tree, or a copy of it): params.yaml, dvc.lock, data/questions/,
data/cohorts/, data/warehouse/, data/rounds/<r>/, metrics/details/. Lineage
and publish read only through this class, so a test can plant a small
version in a temporary folder.
"""

from __future__ import annotations

import functools
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from corpus import hashing
from corpus.config import load_params
from corpus.errors import SourceError


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def params_path(self) -> Path:
        return self.root / "params.yaml"

    @property
    def questions(self) -> Path:
        return self.root / "data" / "questions"

    @property
    def cohorts(self) -> Path:
        return self.root / "data" / "cohorts"

    @property
    def registry(self) -> Path:
        return self.root / "data" / "warehouse" / "registry.parquet"

    @property
    def ingest_report(self) -> Path:
        return self.root / "data" / "warehouse" / "ingest_report.json"

    @property
    def ingest_details(self) -> Path:
        return self.root / "metrics" / "details" / "ingest.json"

    @property
    def dvc_lock(self) -> Path:
        return self.root / "dvc.lock"

    def round_dir(self, round_: int) -> Path:
        return self.root / "data" / "rounds" / str(round_)

    def params(self) -> dict:
        return load_params(self.params_path)

    def rel(self, path: Path) -> str:
        """A path as dvc.lock names it: relative to the root, with forward slashes."""
        try:
            return Path(path).resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return Path(path).as_posix()

    def resolve(self, path: str | Path) -> Path:
        """A path from params.yaml or dvc.lock (relative to the root) as a real path."""
        path = Path(path)
        return path if path.is_absolute() else self.root / path

    def rounds(self) -> list[int]:
        """Rounds that have pair files, in order."""
        base = self.root / "data" / "rounds"
        found = []
        for folder in base.glob("*") if base.is_dir() else []:
            if folder.name.isdigit() and ((folder / "sft.jsonl").is_file() or (folder / "dpo.jsonl").is_file()):
                found.append(int(folder.name))
        return sorted(found)

    def pick_rounds(self, wanted: str | list[int] | None) -> list[int]:
        """'latest' (or None), 'all', '1,2' or a list: rounds that exist, or an error naming what is missing."""
        present = self.rounds()
        if not present:
            raise SourceError(f"{self.root / 'data' / 'rounds'}: no round with sft.jsonl / dpo.jsonl (run the pairs stage)")
        if wanted in (None, "latest"):
            return [present[-1]]
        if wanted == "all":
            return present
        if isinstance(wanted, str):
            try:
                wanted = [int(part) for part in wanted.split(",") if part.strip()]
            except ValueError:
                raise SourceError(f"--rounds: expected 'latest', 'all' or round numbers like 1,2; found {wanted!r}") from None
        missing = [r for r in wanted if r not in present]
        if missing:
            raise SourceError(f"round(s) {missing}: no pair files under {self.root / 'data' / 'rounds'} "
                              f"(rounds with pair files: {present})")
        return sorted(set(wanted))


def _read_lock(layout: Layout) -> dict:
    """dvc.lock parsed ({} when there is none: a folder that never ran under DVC)."""
    if not layout.dvc_lock.is_file():
        return {}
    try:
        return yaml.safe_load(layout.dvc_lock.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise SourceError(f"{layout.dvc_lock}: not valid YAML: {exc}") from None


def lock_entries(layout: Layout) -> dict[str, dict]:
    """Every dep and out of dvc.lock by path: {path: {md5, size, nfiles, stage, kind}}; outs win over deps.

    Empty when there is no dvc.lock (a folder that never ran under DVC).
    """
    lock = _read_lock(layout)
    entries: dict[str, dict] = {}
    for kind in ("deps", "outs"):
        for stage, body in (lock.get("stages") or {}).items():
            for entry in body.get(kind) or []:
                if "md5" not in entry:
                    continue
                path = Path(entry["path"]).as_posix().rstrip("/")
                if kind == "deps" and path in entries:
                    continue
                entries[path] = {"md5": entry["md5"], "size": entry.get("size"), "nfiles": entry.get("nfiles"),
                                 "stage": stage, "kind": kind[:-1]}
    return entries


def lock_params(layout: Layout) -> dict[str, dict]:
    """{out path: the params dvc.lock recorded for the stage that wrote it} (the first such stage; {} without a lock)."""
    by_out: dict[str, dict] = {}
    for body in (_read_lock(layout).get("stages") or {}).values():
        for out in body.get("outs") or []:
            by_out.setdefault(Path(out["path"]).as_posix(), dict((body.get("params") or {}).get("params.yaml") or {}))
    return by_out


@functools.lru_cache(maxsize=4096)
def _md5_cached(path: str, size: int, mtime_ns: int) -> str:
    return hashing.file_md5(path)


def file_md5(path: Path) -> str:
    """md5 of a file's bytes, the hash DVC 3 records for it; cached per (path, size, mtime)."""
    stat = path.stat()
    return _md5_cached(str(path), stat.st_size, stat.st_mtime_ns)


def dvc_cache_manifest(layout: Layout, dir_md5: str) -> dict[str, str] | None:
    """DVC's manifest of a directory out ({relpath: md5}) from the local cache, or None when not cached."""
    if not dir_md5.endswith(".dir"):
        return None
    path = layout.root / ".dvc" / "cache" / "files" / "md5" / dir_md5[:2] / dir_md5[2:]
    if not path.is_file():
        return None
    return {entry["relpath"]: entry["md5"] for entry in json.loads(path.read_text(encoding="utf-8"))}


def matches_lock(layout: Layout, path: str, entries: dict[str, dict]) -> bool | None:
    """Whether the work-tree file or folder at `path` still holds what dvc.lock recorded (None: cannot tell)."""
    entry = entries.get(path)
    target = layout.resolve(path)
    if entry is None or not target.exists():
        return None
    if target.is_file():
        return file_md5(target) == entry["md5"]
    manifest = dvc_cache_manifest(layout, entry["md5"])
    if manifest is None:
        return None
    present = {p.relative_to(target).as_posix(): p for p in target.rglob("*") if p.is_file()}
    return set(present) == set(manifest) and all(file_md5(present[k]) == v for k, v in manifest.items())


# The files a round leaves under data/rounds/<r>/ that a version is made of.
ROUND_ARTIFACTS = ("samples.parquet", "regenerated.parquet", "sft.jsonl", "dpo.jsonl")


def round_artifact_paths(rounds: list[int]) -> list[str]:
    return [f"data/rounds/{round_}/{name}" for round_ in rounds for name in ROUND_ARTIFACTS]


def artifact_records(layout: Layout, paths: list[str], *, present_only: bool = False) -> list[dict]:
    """{path, md5, stage, matches_lock} per path, as dvc.lock recorded it.

    matches_lock: the work tree still holds what dvc.lock hashed (None: no lock entry, a
    folder DVC did not cache, or a source outside the repository, which DVC does not own).
    present_only keeps only the paths dvc.lock knows or the work tree holds.
    """
    entries = lock_entries(layout)
    records = []
    for path in paths:
        entry = entries.get(path) or {}
        if present_only and not entry and not layout.resolve(path).exists():
            continue
        records.append({"path": path, "md5": entry.get("md5"), "stage": entry.get("stage"),
                        "matches_lock": None if path.startswith("..") else matches_lock(layout, path, entries)})
    return records


def git_revision(root: Path) -> dict:
    """{commit, dirty} of the repository holding `root` ({commit: None} outside git)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}
