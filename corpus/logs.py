"""Logging through rich: warnings stand out, progress bars stay readable."""

from __future__ import annotations

import logging

from rich.console import Console
from rich.logging import RichHandler

console = Console(stderr=True)


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(console=console, show_path=False, markup=False)],
        force=True,
    )
    # These libraries log their internals at INFO; only their warnings matter here.
    for noisy in ("great_expectations", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
