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
    # A value that does not parse as its column's type: in `exclude_unparsed` (and in
    # every key) the row is excluded with a reason; in `strict`, ingest stops;
    # elsewhere the value is kept as null and counted, with a warning.
    exclude_unparsed: tuple[str, ...] = ()
    strict: tuple[str, ...] = ()

    def unparsed_action(self, column: str) -> str:
        """'strict', 'exclude' or 'warn' for a value of `column` that does not parse."""
        if column in self.strict:
            return "strict"
        if column in self.exclude_unparsed or column in self.keys:
            return "exclude"
        return "warn"


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
        exclude_unparsed = tuple(entry.get("exclude_unparsed") or ())
        strict = tuple(entry.get("strict") or ())
        for option, listed in (("exclude_unparsed", exclude_unparsed), ("strict", strict)):
            unknown = [c for c in listed if c not in columns]
            if unknown:
                raise ConfigError(f"{where}: {option} column(s) {unknown} are not among its columns")
        both = sorted(set(exclude_unparsed) & set(strict))
        if both:
            raise ConfigError(f"{where}: column(s) {both} are listed under both exclude_unparsed and strict")
        specs.append(
            TableSpec(
                name=name,
                folder=str(entry.get("folder", "")),
                required=bool(entry.get("required", False)),
                columns={str(c): str(t).upper() for c, t in columns.items()},
                keys=keys,
                row_rules=rules,
                exclude_unparsed=exclude_unparsed,
                strict=strict,
            )
        )
    return specs
