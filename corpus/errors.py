"""Errors the pipeline raises on bad input.

Each message says what was expected, what was found and where (file, table,
column or record), so a user can fix the input without reading our code.
"""


class CorpusError(Exception):
    """Base class: a problem with the user's input or configuration."""


class SourceError(CorpusError):
    """A source table or column is missing or unreadable."""


class ConfigError(CorpusError):
    """params.yaml (or a spec file) holds a value we cannot use."""
