"""Logging through rich: warnings stand out, progress bars stay readable."""

from __future__ import annotations

import logging

from rich.console import Console
from rich.logging import RichHandler

console = Console(stderr=True)


# These libraries log their internals at INFO (and set their own logger levels
# on import); only their warnings matter to a user of the pipeline.
NOISY_LIBRARIES = ("great_expectations", "matplotlib", "filelock", "httpx")


def _quiet_libraries(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or not record.name.startswith(NOISY_LIBRARIES)


def setup_logging(level: int = logging.INFO) -> None:
    handler = RichHandler(console=console, show_path=False, markup=False)
    handler.addFilter(_quiet_libraries)
    logging.basicConfig(level=level, format="%(message)s", datefmt="[%X]", handlers=[handler], force=True)
