"""`corpus diff` on two versions in a scratch git+DVC repo with planted changes.

Version 1 -> version 2 plants: DPO pair d2 removed, d5 added (a new question),
d3's chosen text rewritten (same question, same rejected: chosen_changed), d1
and d4 untouched; question qa (both samples wrong: hard) gets a correct sample
(hard -> easy); one regenerated sample becomes a leak drop; param
pairs.max_per_question 4 -> 3. The data files are DVC-tracked (`dvc add`), so
HEAD~1 is read from the DVC cache, not the work tree.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from corpus.cli import app

SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "diff_report.schema.json"
QUESTIONS = {  # id: (task, subject, answer)
    "qa": ("mortality", 1, "A. Yes"), "qb": ("mortality", 2, "B. No"),
    "qc": ("readmission", 3, "A. Yes"), "qd": ("los", 4, "C. 7 to 13 days"),
}


def _sh(args: list[str], cwd: Path) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _messages(role: str, text: str) -> list[dict]:
    return [{"content": text, "role": role}]


def _pair(pair_id: str, question: str, chosen: str, rejected: str) -> dict:
    return {"id": pair_id, "question_id": question, "prompt": _messages("user", f"Record of {question}. Which option?"),
            "chosen": _messages("assistant", chosen), "rejected": _messages("assistant", rejected)}


def _questions() -> pl.DataFrame:
    rows = [{"id": q, "task": task, "subject_id": subject, "hadm_id": 100 + subject, "split": "train",
             "context": f"visits of patient {subject}", "question": f"{task}?", "options": ["A. Yes", "B. No"],
             "answer": answer, "label_convention": "kare"} for q, (task, subject, answer) in QUESTIONS.items()]
    return pl.DataFrame(rows)


def _samples(qa_correct: bool) -> pl.DataFrame:
    rows = []
    for q in QUESTIONS:
        for k in (0, 1):
            correct = (q != "qa") if not (q == "qa" and k == 1) else qa_correct
            text = "I now think A because of the lactate" if (q == "qa" and k == 1 and qa_correct) else f"{q} sample {k}"
            rows.append({"id": f"s-{q}-{k}-{int(correct)}", "question_id": q, "task": QUESTIONS[q][0], "round": 1,
                         "generator": "gen-v1", "hinted": False, "k_index": k, "seed": k, "text": text,
                         "correct": correct})
    return pl.DataFrame(rows)


def _regenerated(leak: bool) -> pl.DataFrame:
    reasons = [None, "wrong answer", "leak:given_answer" if leak else None]
    return pl.DataFrame({
        "id": ["r0", "r1", "r2-leak" if leak else "r2"], "question_id": ["qa"] * 3, "task": ["mortality"] * 3,
        "generator": ["gen-v1-hinted"] * 3, "hinted": [True] * 3, "k_index": [0, 1, 2], "seed": [0, 1, 2],
        "text": ["hinted a", "hinted b", "as I was told, A" if leak else "hinted c"], "correct": [True, False, True],
        "leaked": [False, False, leak], "leak_rule": [None, None, "given_answer" if leak else None],
        "filter_reason": reasons,
    })


def _write_version(root: Path, version: int) -> None:
    data = root / "data"
    (data / "questions").mkdir(parents=True, exist_ok=True)
    _questions().write_parquet(data / "questions" / "train.parquet")
    round_dir = data / "rounds" / "1"
    round_dir.mkdir(parents=True, exist_ok=True)
    pairs = [_pair("d1", "qa", "The answer is A given the lactate trend", "The answer is B"),
             _pair("d2", "qa", "Lactate is rising so A", "Probably B"),
             _pair("d3", "qb", "The patient recovered well, so B", "A because of age"),
             _pair("d4", "qc", "Readmitted within days, so A", "B because stable")]
    if version == 2:
        pairs = [pairs[0], _pair("d3v2", "qb", "The patient recovered fully at discharge, so B", "A because of age"),
                 pairs[3], _pair("d5", "qd", "A long stay of ten days: C", "A short stay: A")]
    (round_dir / "dpo.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    sft = [{"id": "f1", "question_id": "qb", "prompt": _messages("user", "Record of qb."),
            "completion": _messages("assistant", "The patient recovered well, so B")}]
    (round_dir / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sft))
    _samples(qa_correct=version == 2).write_parquet(round_dir / "samples.parquet")
    _regenerated(leak=version == 2).write_parquet(round_dir / "regenerated.parquet")
    details = root / "metrics" / "details"
    details.mkdir(parents=True, exist_ok=True)
    (details / "sample-1.json").write_text(json.dumps({"generator": {"model": f"model-v{version}", "dtype": "float32"}}))
    params = {"rounds": {"1": {"generator": "models/base"}}, "regenerate": {"hard_threshold": 0.0},
              "pairs": {"max_per_question": 4 if version == 1 else 3, "min_rationale_chars": 40}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("diffrepo")
    _sh(["git", "init", "-q"], root)
    _sh(["dvc", "init", "-q"], root)
    for version in (1, 2):
        _write_version(root, version)
        if version == 1:  # a plain folder copy of version 1, outside any repository
            shutil.copytree(root / "data" / "rounds" / "1", root.parent / f"{root.name}-v1-round")
        _sh(["dvc", "add", "-q", "data/questions", "data/rounds/1"], root)
        _sh(["git", "add", "-A"], root)
        _sh(["git", "commit", "-qm", f"version {version}"], root)
    _sh(["git", "tag", "v1", "HEAD~1"], root)
    return root


def _diff(repo: Path, *args: str):
    return CliRunner().invoke(app, ["diff", *args, "--repo", str(repo)])


def _json(repo: Path, *args: str) -> dict:
    result = _diff(repo, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_rev_diff_reports_exactly_the_planted_changes(repo):
    report = _json(repo, "HEAD~1", "HEAD")
    assert report["old"]["kind"] == report["new"]["kind"] == "rev" and report["old"]["round"] == "1"
    assert {k: report["records"][k] for k in ("old", "new", "unchanged", "added", "removed", "changed")} == \
        {"old": 4, "new": 4, "unchanged": 2, "added": 1, "removed": 1, "changed": 1}
    assert report["records"]["changed_by_kind"] == {"chosen_changed": 1, "rejected_changed": 0, "both_changed": 0,
                                                    "prompt_changed": 0}
    assert report["ids"]["added"] == ["d5"] and report["ids"]["removed"] == ["d2"]
    assert report["ids"]["changed"] == [{"kind": "chosen_changed", "question_id": "qb", "old_id": "d3",
                                         "new_id": "d3v2"}]
    assert report["hardness"]["hard_to_easy"] == ["qa"] and report["hardness"]["easy_to_hard"] == []
    assert report["params"]["changed"] == [{"key": "pairs.max_per_question", "change": "changed", "old": 4, "new": 3}]
    shifts = {(r["task"], r["label"]): (r["old"], r["new"], r["delta"]) for r in report["by_task_label"]}
    assert shifts == {("mortality", "A"): (2, 1, -1), ("mortality", "B"): (1, 1, 0),
                      ("readmission", "A"): (1, 1, 0), ("los", "C"): (0, 1, 1)}
    regen = report["regeneration"]
    assert regen["old"]["filter_reasons"] == {"kept": 2, "wrong answer": 1}
    assert regen["new"]["filter_reasons"] == {"kept": 1, "leak:given_answer": 1, "wrong answer": 1}
    assert regen["new"]["leak_drop_rate"] == pytest.approx(1 / 3, abs=1e-4) and regen["old"]["yield"] == 0.6667
    assert report["generators"]["old"]["details"]["model"] == "model-v1"
    assert report["generators"]["new"]["samples"] == ["gen-v1"]
    chosen = [e for e in report["examples"] if e["kind"] == "chosen_changed"]
    assert chosen[0]["diff"] == "The patient recovered [-well,-] {+fully at discharge,+} so B"
    assert report["lengths"]["chosen"]["old"]["count"] == 4


def test_json_validates_against_its_schema(repo):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    for artifact in ("dpo", "sft", "samples", "regenerated", "questions"):
        report = _json(repo, "v1", "HEAD", "--artifact", artifact, "--fail-on", "added>100")
        assert report["schema_version"] == 1
        jsonschema.Draft202012Validator(schema).validate(report)


def test_other_artifacts(repo):
    samples = _json(repo, "v1", "HEAD", "--artifact", "samples")
    assert samples["records"]["changed_by_kind"]["text_changed"] == 1
    assert samples["ids"]["changed"][0]["question_id"] == "qa"
    regenerated = _json(repo, "v1", "HEAD", "--artifact", "regenerated")
    assert regenerated["records"]["changed_by_kind"]["text_changed"] == 1
    sft = _json(repo, "v1", "HEAD", "--artifact", "sft")
    assert sft["records"]["unchanged"] == 1 and sft["records"]["changed"] == 0


def test_fail_on_sets_the_exit_code(repo):
    tripped = _diff(repo, "HEAD~1", "HEAD", "--json", "--fail-on", "added>100", "--fail-on", "removed>0.2")
    assert tripped.exit_code == 1
    assert "removed>0.2 tripped: removed_fraction = 0.25" in tripped.stderr
    report = json.loads(tripped.stdout)
    assert [g["tripped"] for g in report["fail_on"]] == [False, True]
    assert _diff(repo, "HEAD~1", "HEAD", "--fail-on", "removed>0.3", "--fail-on", "added>=2").exit_code == 0
    leak = _diff(repo, "HEAD~1", "HEAD", "--markdown", "--fail-on", "leak_drop_rate>0.1")
    assert leak.exit_code == 1 and "leak_drop_rate>0.1" in leak.stderr
    assert _diff(repo, "HEAD~1", "HEAD", "--fail-on", "chosen_changed>=1").exit_code == 1
    unknown = _diff(repo, "HEAD~1", "HEAD", "--fail-on", "nonsense>1")
    assert unknown.exit_code == 2 and "unknown metric nonsense" in unknown.stderr


def test_round_folder_and_file_sides(repo):
    folder = repo.parent / f"{repo.name}-v1-round"
    report = _json(repo, str(folder), "round:1")
    assert report["old"]["kind"] == "folder" and report["new"]["kind"] == "round"
    assert (report["records"]["added"], report["records"]["removed"], report["records"]["changed"]) == (1, 1, 1)
    assert report["hardness"]["hard_to_easy"] == ["qa"]
    assert report["params"]["available"] == {"old": False, "new": True}
    by_file = _json(repo, str(folder / "dpo.jsonl"), str(repo / "data" / "rounds" / "1" / "dpo.jsonl"))
    assert by_file["ids"]["removed"] == ["d2"] and by_file["hardness"] is None
    same = _json(repo, "round:1", "HEAD")
    assert same["records"]["unchanged"] == 4 and same["params"]["changed"] == []


def test_markdown_and_terminal_reports(repo):
    markdown = _diff(repo, "HEAD~1", "HEAD", "--markdown")
    assert markdown.exit_code == 0
    assert "**1 added**, **1 removed**, **1 changed**" in markdown.stdout
    assert "| pairs.max_per_question | 4 | 3 |" in markdown.stdout
    assert "{+fully at discharge,+}" in markdown.stdout
    assert "| hard → easy | 1 | qa |" in markdown.stdout
    terminal = _diff(repo, "HEAD~1", "HEAD")
    assert terminal.exit_code == 0 and "chosen_changed" in terminal.stdout and "hard → easy" in terminal.stdout


def test_a_bad_side_names_itself(repo):
    result = _diff(repo, "no-such-rev", "HEAD")
    assert result.exit_code == 2
    assert "side 'no-such-rev'" in result.stderr
    missing = _diff(repo, "round:7", "HEAD")
    assert missing.exit_code == 2 and "round:7" in missing.stderr


def test_pair_file_with_ids_reads_the_user_prompt_of_those_records(tmp_path):
    """The prompt text an example of a `prompt_changed` pair shows (DuckDB's list_filter lambda)."""
    from corpus.atomic import canonical_json
    from corpus.versions.sides import read_pair_file

    def record(rid: str, user: str) -> dict:
        return {"id": rid, "question_id": "q" + rid,
                "prompt": [{"role": "system", "content": "sys"}, {"role": "user", "content": user}],
                "chosen": [{"role": "assistant", "content": "yes because"}],
                "rejected": [{"role": "assistant", "content": "no because"}]}

    path = tmp_path / "dpo.jsonl"
    path.write_text("".join(canonical_json(record(r, f"context of {r}")) + "\n" for r in ("a", "b", "c")))
    picked = read_pair_file(path, "dpo", ids=["c", "a"]).sort("id")
    assert picked["id"].to_list() == ["a", "c"]
    assert picked["prompt"].to_list() == ["context of a", "context of c"]
    assert "prompt" not in read_pair_file(path, "dpo").columns
