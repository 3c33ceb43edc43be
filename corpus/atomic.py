"""Atomic writes: a reader sees the old artifact or the new one, never half of one.

Every output is written to a temporary sibling first and renamed into place
only when complete, so a failed or killed stage leaves no partial artifact and
keeps whatever finished work was there before.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publishable(path: Path, mode: int) -> None:
    """mkstemp/mkdtemp create owner-only entries; give the final artifact the usual permissions."""
    os.chmod(path, mode & ~_umask())


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: same content, same bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@contextlib.contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary file path next to `target`; rename it onto `target` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _publishable(tmp, 0o666)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(target: Path | str) -> Iterator[Path]:
    """Yield an empty temporary folder next to `target`; swap it in for `target` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        _publishable(tmp, 0o777)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_json(target: Path | str, obj: Any, *, pretty: bool = True) -> None:
    """Write JSON atomically; sorted keys so the bytes depend only on the content."""
    text = json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n" if pretty else canonical_json(obj) + "\n"
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
