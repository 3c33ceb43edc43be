"""Shared wrapper for stage scripts: rich logging, and a clear one-line error on bad input."""

from __future__ import annotations

import logging
import sys
from typing import Callable

from corpus.errors import CorpusError
from corpus.logs import setup_logging


def main(run: Callable[[], object]) -> None:
    setup_logging()
    try:
        run()
    except CorpusError as exc:
        logging.getLogger("corpus").error("%s", exc)
        sys.exit(1)
