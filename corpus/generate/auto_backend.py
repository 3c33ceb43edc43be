"""`sample.backend: auto`: the backend that measured faster on this CPU's family.

The table is data (corpus/templates/backend_defaults.yaml), so a new
measurement changes a line there, not code.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

from corpus.cpu import FAMILIES, cpu_family
from corpus.errors import ConfigError

DEFAULTS = Path(__file__).resolve().parent.parent / "templates" / "backend_defaults.yaml"


@lru_cache(maxsize=None)
def backend_table(path: Path = DEFAULTS) -> dict[str, str]:
    """CPU family -> backend, checked: every family present, every backend known."""
    from corpus.generate.backends import BACKENDS

    try:
        families = (yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}).get("families") or {}
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: cannot read the backend defaults ({error})") from None
    missing = [family for family in FAMILIES if family not in families]
    unknown = {family: backend for family, backend in families.items() if backend not in BACKENDS}
    if missing or unknown or set(families) - set(FAMILIES):
        raise ConfigError(f"{path} families: expected a backend ({', '.join(BACKENDS)}) for each of "
                          f"{', '.join(FAMILIES)}; missing {missing}, unknown backends {unknown}, "
                          f"unknown families {sorted(set(families) - set(FAMILIES))}")
    return dict(families)


def resolve_backend(backend: str, family: str | None = None, path: Path = DEFAULTS) -> tuple[str, str]:
    """(backend that runs, CPU family it was chosen for); a named backend passes through."""
    family = family or cpu_family()
    if backend != "auto":
        return backend, family
    return backend_table(path)[family], family
