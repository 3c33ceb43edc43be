"""Registry tables (one row per patient) and their column specs: the source of C-Reason masked-value questions."""

from corpus.registry.build import build_sepsis_registry, check_registry, load_registry
from corpus.registry.spec import ColumnSpec, RegistrySpec, load_registry_spec

__all__ = [
    "ColumnSpec",
    "RegistrySpec",
    "build_sepsis_registry",
    "check_registry",
    "load_registry",
    "load_registry_spec",
]
