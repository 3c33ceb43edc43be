#!/usr/bin/env bash
# Build PyHealth 2.1.0's own venv for bench/full_scale.py (not part of `make test`).
#
#   bash bench/pyhealth_peer/setup_venv.sh [VENV]     # default /tmp/pyhealth-venv
#
# PyHealth 2.x declares Python >= 3.12; this machine has 3.11.7 and no 3.12
# package, so (as ../shared/FACTS.md records) PyHealth goes in with --no-deps
# --ignore-requires-python, its declared dependencies beside it under our
# constraints, and three shims (shims/*.py, loaded by a .pth file) fill what
# 3.11 lacks. PyHealth's own source is not changed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-/tmp/pyhealth-venv}"
python="${PYTHON:-python3}"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import pyhealth, pyhealth_shims" 2>/dev/null; then
    echo "PyHealth venv ready: $venv"; exit 0
fi
"$python" -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q -r "$here/requirements.txt" -c "$here/constraints.txt"
"$venv/bin/pip" install -q --no-deps --ignore-requires-python pyhealth==2.1.0
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cp "$here/shims/pyhealth_shims.py" "$site/"
rm -rf "$site/torchvision"
cp -r "$here/shims/torchvision" "$site/torchvision"
# A .pth line starting with "import" runs at interpreter start, before any
# `from functools import cached_property` in dask or PyHealth binds the old one.
echo "import pyhealth_shims" > "$site/pyhealth_shims.pth"
"$venv/bin/python" -c "import pyhealth, itertools; assert itertools.batched; print('PyHealth', pyhealth.__version__ if hasattr(pyhealth, '__version__') else '2.1.0', 'ready in', '$venv')"
