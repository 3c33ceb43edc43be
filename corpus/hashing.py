"""Content ids: the first 16 hex digits of sha256 over canonical JSON."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from corpus.atomic import canonical_json


def content_id(content: Any) -> str:
    """Id of a record: same content, same id, on any machine."""
    return hashlib.sha256(canonical_json(content).encode("utf-8")).hexdigest()[:16]


def _file_digest(path: Path | str, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path | str) -> str:
    return _file_digest(path, "sha256")


def file_md5(path: Path | str) -> str:
    """md5 of a file's bytes: the hash DVC 3 records for a file in dvc.lock."""
    return _file_digest(path, "md5")
