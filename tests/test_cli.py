"""The `corpus` command explains itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from corpus.cli import app


def test_help_lists_every_command_with_a_description():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in app.registered_commands:
        name = command.name or command.callback.__name__
        first_line = (command.callback.__doc__ or "").strip().splitlines()[0]
        assert name in result.output, name
        assert first_line[:30] in result.output, f"{name} has no one-line description in --help"


def test_console_script_is_installed():
    corpus = Path(sys.executable).parent / "corpus"
    done = subprocess.run([str(corpus), "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "ingest" in done.stdout


def test_bad_params_gives_a_clear_error(tmp_path):
    (tmp_path / "params.yaml").write_text("cohorts:\n  label_convention: nope\n")
    result = CliRunner().invoke(app, ["cohorts", "--params", str(tmp_path / "params.yaml")])
    assert result.exit_code == 1
