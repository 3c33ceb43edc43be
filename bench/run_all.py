"""`make bench`: the sampling benchmark with its defaults (~5-7 min); it prints the CPU line first.

Extra arguments go to sampling_throughput.py, e.g.
    .venv/bin/python bench/run_all.py --questions 8 --baseline-questions 2 --max-new-tokens 24   # quick
fixed_lengths.py compares two engines on recorded lengths: run it by hand (see bench/README.md).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    sys.exit(subprocess.run([sys.executable, str(HERE / "sampling_throughput.py"), *sys.argv[1:]]).returncode)
