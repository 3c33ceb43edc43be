"""The `corpus` command explains itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from corpus.cli import app
from tests.conftest import REPO, SEPSIS


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


def test_leaks_command_writes_one_verdict_per_row(tmp_path):
    import json

    rows = [
        {"id": "leaky", "rationale": "As the hint says, the patient will not be readmitted. Answer: No",
         "hint": "the correct answer is No"},
        {"id": "clean", "rationale": "Lactate hints at hypoperfusion; given his CKD the risk is high. Final answer: Yes",
         "hint": "the correct answer is Yes"},
        {"rationale": "Working backwards from the known outcome, it must be B.", "hint": "the correct answer is B"},
    ]
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "verdicts.jsonl"
    result = CliRunner().invoke(app, ["leaks", "--input", str(source), "--output", str(out)])
    assert result.exit_code == 0, result.output
    verdicts = [json.loads(line) for line in out.read_text().splitlines()]
    assert [v["id"] for v in verdicts] == ["leaky", "clean", 2]
    assert [v["leak"] for v in verdicts] == [True, False, True]
    assert verdicts[0]["rule"] and verdicts[1]["rule"] is None

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"rationale": "fine", "hint": "x"}\nnot json\n')
    result = CliRunner().invoke(app, ["leaks", "--input", str(broken), "--output", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 1 and not (tmp_path / "o.jsonl").exists()


@pytest.mark.skipif(not (SEPSIS / "training_setB").is_dir(), reason=f"{SEPSIS}/training_setB not found")
def test_registry_command_builds_the_registry_stage(tmp_path, monkeypatch):
    """`corpus registry` runs stage `registry` by hand: a few real challenge stays in, the
    typed parquet and the stage's summary out; a stay file with another header stops it
    by name and leaves the finished table as it was."""
    import json
    import shutil

    import polars as pl
    import yaml

    source = tmp_path / "stays"
    source.mkdir()
    stays = sorted((SEPSIS / "training_setB").glob("*.psv"))[:5]
    for stay in stays:
        shutil.copy(stay, source / stay.name)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"registry": {"source": str(source), "spec": str(REPO / "schemas/registry_sepsis.yaml"),
                                                   "window_hours": 6}}))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["registry", "--params", str(params)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{"):])  # after the stage's log line
    written = pl.read_parquet(tmp_path / "data/warehouse/registry.parquet")
    assert summary["stays"] == written.height == 5 and summary["window_hours"] == 6
    assert sorted(written["subject_id"].to_list()) == sorted(int(s.stem[1:]) for s in stays)
    assert json.loads((tmp_path / "metrics/registry.json").read_text())["stays"] == 5

    before = (tmp_path / "data/warehouse/registry.parquet").read_bytes()
    header = stays[0].read_text().splitlines()[0]
    (source / "p999999.psv").write_text(header.replace("Lactate", "Lactic") + "\n")
    result = CliRunner().invoke(app, ["registry", "--params", str(params)])
    assert result.exit_code == 1
    assert (tmp_path / "data/warehouse/registry.parquet").read_bytes() == before
