"""A registry's column spec (e.g. schemas/registry_sepsis.yaml): what each column holds and how to show it.

The spec is what makes any registry table (csv or parquet, one row per
patient) usable for questions: its types say how a column is checked and
hidden, its readable names and units how a value is shown, its roles which
columns a question may hide (features) or only show (outcomes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from corpus.errors import ConfigError

COLUMN_TYPES = ("id", "numeric", "categorical")
ROLES = ("id", "feature", "outcome")
REQUIRED_KEYS = ("name", "type", "unit", "readable", "role")
OPTIONAL_KEYS = ("decimals", "categories", "labels", "missing_values")


def _text(value: Any) -> str:
    """A category as text, whatever YAML or the table typed it as: 1, 1.0 and '1' are all '1'."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    type: str
    role: str
    readable: str
    unit: str | None = None
    decimals: int | None = None
    categories: tuple[str, ...] | None = None  # as text; None: whatever the table holds
    labels: dict[str, str] = field(default_factory=dict)  # category -> shown text
    missing_values: tuple[str, ...] = ()

    def show_category(self, value: Any) -> str:
        text = _text(value)
        return self.labels.get(text, text)

    def is_missing(self, value: Any) -> bool:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return True
        return self.type == "categorical" and _text(value) in self.missing_values


@dataclass(frozen=True)
class RegistrySpec:
    path: Path
    name: str
    title: str
    note: str | None
    columns: tuple[ColumnSpec, ...]

    @property
    def id_column(self) -> ColumnSpec:
        return next(c for c in self.columns if c.role == "id")

    @property
    def features(self) -> tuple[ColumnSpec, ...]:
        return tuple(c for c in self.columns if c.role == "feature")

    @property
    def outcomes(self) -> tuple[ColumnSpec, ...]:
        return tuple(c for c in self.columns if c.role == "outcome")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> ColumnSpec:
        for column in self.columns:
            if column.name == name:
                return column
        raise ConfigError(f"{self.path}: no column {name!r} in the spec (columns: {', '.join(self.names)})")


def _column(entry: Any, index: int, path: Path) -> ColumnSpec:
    where = f"{path}: columns[{index}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a mapping with {', '.join(REQUIRED_KEYS)}, found {entry!r}")
    missing = [k for k in REQUIRED_KEYS if k not in entry]
    if missing:
        raise ConfigError(f"{where} ({entry.get('name', '?')}): missing key(s) {', '.join(missing)}")
    unknown = sorted(set(entry) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise ConfigError(f"{where} ({entry['name']}): unknown key(s) {', '.join(unknown)}")
    name, kind, role = str(entry["name"]), str(entry["type"]), str(entry["role"])
    where = f"{path}: column {name}"
    if kind not in COLUMN_TYPES:
        raise ConfigError(f"{where}: type must be one of {', '.join(COLUMN_TYPES)}, found {kind!r}")
    if role not in ROLES:
        raise ConfigError(f"{where}: role must be one of {', '.join(ROLES)}, found {role!r}")
    if (kind == "id") != (role == "id"):
        raise ConfigError(f"{where}: type id and role id go together (found type {kind}, role {role})")
    readable = str(entry["readable"] or "").strip()
    if not readable:
        raise ConfigError(f"{where}: readable name is empty")
    decimals = entry.get("decimals")
    if decimals is not None:
        if kind != "numeric" or not isinstance(decimals, int) or isinstance(decimals, bool) or decimals < 0:
            raise ConfigError(f"{where}: decimals is for numeric columns, a whole number >= 0; found {decimals!r}")
    categorical_keys = [k for k in ("categories", "labels", "missing_values") if entry.get(k) is not None]
    if categorical_keys and kind != "categorical":
        raise ConfigError(f"{where}: {', '.join(categorical_keys)} only apply to categorical columns (type {kind})")
    categories = entry.get("categories")
    if categories is not None:
        categories = tuple(_text(c) for c in categories)
        if len(set(categories)) != len(categories) or not categories:
            raise ConfigError(f"{where}: categories must be distinct and not empty, found {list(categories)}")
    labels = {_text(k): str(v) for k, v in (entry.get("labels") or {}).items()}
    unlisted = sorted(set(labels) - set(categories or labels))
    if unlisted:
        raise ConfigError(f"{where}: labels for values not among its categories: {unlisted}")
    if len(set(labels.values())) != len(labels):
        raise ConfigError(f"{where}: two categories share a label: {labels}")
    unit = entry.get("unit")
    return ColumnSpec(
        name=name,
        type=kind,
        role=role,
        readable=readable,
        unit=None if unit is None or str(unit).strip() == "" else str(unit),
        decimals=decimals,
        categories=categories,
        labels=labels,
        missing_values=tuple(_text(v) for v in entry.get("missing_values") or ()),
    )


def load_registry_spec(path: Path | str) -> RegistrySpec:
    """Read and check a column spec; every problem is a ConfigError naming the file and column."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: registry column spec not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("columns"), list) or not raw["columns"]:
        raise ConfigError(f"{path}: expected a mapping with a non-empty 'columns' list")
    columns = tuple(_column(entry, i, path) for i, entry in enumerate(raw["columns"]))
    for attribute in ("name", "readable"):
        seen: set[str] = set()
        for column in columns:
            value = getattr(column, attribute)
            key = value.casefold()
            if key in seen:
                raise ConfigError(f"{path}: column {attribute} {value!r} is used twice (must be unique)")
            seen.add(key)
    ids = [c.name for c in columns if c.role == "id"]
    if len(ids) != 1:
        raise ConfigError(f"{path}: expected exactly one column with role id, found {len(ids)} ({', '.join(ids)})")
    if not any(c.role == "feature" for c in columns):
        raise ConfigError(f"{path}: no column with role feature (nothing a question could hide)")
    note = raw.get("note")
    return RegistrySpec(
        path=path,
        name=str(raw.get("name") or path.stem),
        title=str(raw.get("title") or raw.get("name") or path.stem),
        note=None if note is None else str(note).strip(),
        columns=columns,
    )
