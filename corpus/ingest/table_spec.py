"""The source table spec (schemas/mimic_tables.yaml): tables, columns, types, keys, row rules."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from corpus.errors import ConfigError


@dataclass(frozen=True)
class RowRule:
    reason: str
    when: str  # DuckDB SQL condition over the typed row


@dataclass(frozen=True)
class TableSpec:
    name: str
    folder: str
    required: bool
    columns: dict[str, str]  # column -> DuckDB type, in reading order
    keys: tuple[str, ...]
    row_rules: tuple[RowRule, ...] = field(default_factory=tuple)


def load_table_spec(path: Path | str) -> list[TableSpec]:
    """Tables in the order the spec lists them (a rule may only refer to earlier tables)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: table spec not found") from None
    tables = (raw or {}).get("tables")
    if not isinstance(tables, dict) or not tables:
        raise ConfigError(f"{path}: expected a top-level 'tables' mapping")
    specs = []
    for name, entry in tables.items():
        where = f"{path}: table {name}"
        columns = entry.get("columns") or {}
        if not columns:
            raise ConfigError(f"{where}: no columns listed")
        keys = tuple(entry.get("keys") or ())
        unknown_keys = [k for k in keys if k not in columns]
        if unknown_keys:
            raise ConfigError(f"{where}: key(s) {unknown_keys} are not among its columns")
        rules = tuple(RowRule(reason=r["reason"], when=r["when"]) for r in entry.get("row_rules") or ())
        specs.append(
            TableSpec(
                name=name,
                folder=str(entry.get("folder", "")),
                required=bool(entry.get("required", False)),
                columns={str(c): str(t).upper() for c, t in columns.items()},
                keys=keys,
                row_rules=rules,
            )
        )
    return specs
