"""Row-level lineage on a small planted version: record -> samples -> question -> cohort/registry row -> sources.

`build_version` writes the artifacts with the real schemas and makes the pair
files with the real corpus.pairs functions; test_publish.py builds on it.
"""

from __future__ import annotations

import hashlib
import json

import polars as pl
import pyarrow as pa
import pytest
import yaml
from typer.testing import CliRunner

from corpus.atomic import canonical_json
from corpus.cli import app
from corpus.generate.prompts import sampling_template
from corpus.pairs import PairsConfig, dpo_records, sft_records
from corpus.questions.question_sets import QUESTION_SCHEMA
from corpus.questions.record import make_question
from corpus.registry.spec import load_registry_spec
from corpus.versions.layout import Layout
from corpus.versions.lineage import LineageError, lineage_summary, lineage_table, trace
from tests.conftest import REPO

SPEC = REPO / "schemas" / "registry_sepsis.yaml"
RATIONALE = "The admissions come close together and the same conditions keep returning, so "
GENERATOR, HINTED_GENERATOR = "a1a1a1a1a1a1a1a1", "b2b2b2b2b2b2b2b2"


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _sample(question_id, text, *, k, correct, predicted, hinted=False, seed=None, generator=GENERATOR, **extra):
    return {"id": hashlib.sha256(f"{question_id}{text}{k}{hinted}".encode()).hexdigest()[:16], "question_id": question_id,
            "task": extra.pop("task", "readmission"), "round": 1, "generator": generator, "prompt_hash": "p" * 16,
            "hinted": hinted, "k_index": k, "seed": seed if seed is not None else 1000 + k, "text": text,
            "rationale": text.rsplit(" The answer", 1)[0], "predicted": predicted, "correct": correct, "leaked": False,
            "parse_status": "statement", "new_tokens": 40, "finish_reason": "eos", **extra}


def _questions(root):
    readable = load_registry_spec(SPEC).column("hr_mean").readable
    common = dict(context="Visit 1: ...", options=["Yes", "No"], label_convention="kare", template_hash="t" * 16)
    readmit = make_question(task="readmission", subject_id=10, hadm_id=100, question="Readmitted within 15 days?",
                            answer="Yes", **common)
    options = ["A. below 80 bpm", "B. 80 bpm to below 100 bpm", "C. 100 bpm or above", "D. not recorded"]
    masked = make_question(task="masked_value", subject_id=7, hadm_id=None, context="Record from the registry...",
                           question=f"Hidden value: {readable}. Which range holds it? Choose one option.\nOptions:\n"
                                    + "\n".join(options), options=options, answer=options[1],
                           label_convention="creason", template_hash="m" * 16)
    held = make_question(task="readmission", subject_id=11, hadm_id=110, question="Readmitted within 15 days?",
                         answer="No", **common)
    by_split = {"train": [readmit, masked], "val": [held], "test": [{**held, "id": "f" * 16}]}
    (root / "data" / "questions").mkdir(parents=True)
    for split, rows in by_split.items():
        rows = [{**q, "split": split} for q in rows]
        pl.from_arrow(pa.Table.from_pylist(rows, schema=QUESTION_SCHEMA)).write_parquet(
            root / "data" / "questions" / f"{split}.parquet")
    return readmit, masked


def build_version(root, *, open_data=True, rounds=(1,)):
    """A planted version under `root`: params, dvc.lock, sources, questions, cohorts, registry, rounds."""
    source = root / "src" / "mimic-iv-demo"
    (source / "hosp").mkdir(parents=True)
    (source / "hosp" / "admissions.csv").write_text("subject_id,hadm_id\n10,100\n10,101\n")
    registry_source = root / "src" / "sepsis-challenge-2019" / "training_setB"
    registry_source.mkdir(parents=True)
    (registry_source / "p000007.psv").write_text("HR|SepsisLabel\n92.5|0\n")
    params = {"mimic": {"source": str(source), "table_spec": str(REPO / "schemas" / "mimic_tables.yaml"),
                        "open_data": open_data},
              "registry": {"source": str(registry_source), "spec": str(SPEC)}, "pairs": {"max_per_question": 4}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    readmit, masked = _questions(root)
    (root / "data" / "cohorts").mkdir(parents=True)
    pl.DataFrame({"task": ["readmission", "readmission"], "subject_id": [10, 10], "hadm_id": [100, 101],
                  "visit_index": [0, 1], "label": [1, 0], "label_convention": ["kare", "kare"]},
                 schema_overrides={"label": pl.Int32}).write_parquet(root / "data" / "cohorts" / "readmission.parquet")
    (root / "data" / "warehouse").mkdir(parents=True)
    pl.DataFrame({"subject_id": [7, 8], "hr_mean": [92.5, 70.0], "gender": ["female", "male"]}).write_parquet(
        root / "data" / "warehouse" / "registry.parquet")
    (root / "data" / "warehouse" / "ingest_report.json").write_text(json.dumps({"rows_excluded": 0, "invalid_values": 0}))
    (root / "metrics" / "details").mkdir(parents=True)
    (root / "metrics" / "details" / "ingest.json").write_text(json.dumps(
        {"tables": {"admissions": {"rows_read": 2, "rows_written": 2}}}))
    questions = {q["id"]: {**q, "split": "train"} for q in (readmit, masked)}
    right = RATIONALE + "a readmission is likely. The answer is Yes."
    for round_ in rounds:
        folder = root / "data" / "rounds" / str(round_)
        folder.mkdir(parents=True)
        samples = pl.DataFrame([
            _sample(readmit["id"], right, k=0, correct=True, predicted="Yes"),
            _sample(readmit["id"], RATIONALE + "nothing points to a return. The answer is No.", k=1, correct=False,
                    predicted="No"),
            _sample(masked["id"], "Heart rate means sit near ninety in this unit, so the middle range holds it. "
                    "The answer is B.", k=0, correct=True, predicted=masked["answer"], task="masked_value"),
        ])
        regenerated = pl.DataFrame([
            # the same correct text again, hinted and kept; and a hinted text the filter dropped for a leak
            {**_sample(readmit["id"], right, k=2, correct=True, predicted="Yes", hinted=True,
                       generator=HINTED_GENERATOR), "leak_rule": None, "filter_reason": None},
            {**_sample(readmit["id"], "I was told the answer is Yes, so " + right, k=3, correct=True, predicted="Yes",
                       hinted=True, generator=HINTED_GENERATOR, leaked=True), "leak_rule": "told_answer",
             "filter_reason": "leak:told_answer"},
        ]).with_columns(pl.col("leak_rule").cast(pl.String), pl.col("filter_reason").cast(pl.String))
        samples.write_parquet(folder / "samples.parquet")
        regenerated.write_parquet(folder / "regenerated.parquet")
        kept = regenerated.filter(pl.col("filter_reason").is_null()).select(samples.columns)
        pool, config, template = pl.concat([samples, kept]), PairsConfig(min_rationale_chars=0), sampling_template()
        sft = sft_records(pool, questions, template, config)
        # one planted record whose text no sample has: lineage must say it is untraced
        orphan = {"question_id": readmit["id"], "prompt": sft[0]["prompt"],
                  "completion": [{"role": "assistant", "content": "A text nobody sampled. The answer is Yes."}]}
        sft.append({"id": "0" * 16, **orphan})
        dpo = dpo_records(pool, samples, questions, template, config)
        for name, records in (("sft.jsonl", sft), ("dpo.jsonl", dpo)):
            (folder / name).write_text("".join(canonical_json(r) + "\n" for r in records), encoding="utf-8")
    lock = {"schema": "2.0", "stages": {
        "ingest": {"deps": [{"path": str(source), "md5": "d" * 32 + ".dir"}],
                   "params": {"params.yaml": {"mimic.source": str(source)}}, "outs": [{"path": "data/warehouse/mimic", "md5": "w" * 32 + ".dir"}]},
        "questions": {"outs": [{"path": "data/questions", "md5": "q" * 32 + ".dir"}], "params": {"params.yaml": {"questions": {"seed": 13}}}},
        **{f"pairs@{r}": {"outs": [{"path": f"data/rounds/{r}/{n}", "md5": _md5(root / "data" / "rounds" / str(r) / n)}
                                   for n in ("sft.jsonl", "dpo.jsonl")]} for r in rounds}}}
    (root / "dvc.lock").write_text(yaml.safe_dump(lock))
    return {"readmission": readmit, "masked": masked, "right": right}


@pytest.fixture()
def version(tmp_path):
    planted = build_version(tmp_path)
    planted["root"] = tmp_path
    planted["sft"] = [json.loads(line) for line in (tmp_path / "data/rounds/1/sft.jsonl").read_text().splitlines()]
    planted["dpo"] = [json.loads(line) for line in (tmp_path / "data/rounds/1/dpo.jsonl").read_text().splitlines()]
    return planted


def _record_for(records, question_id, field, text):
    return next(r for r in records if r["question_id"] == question_id and r[field][0]["content"] == text)


def test_sft_record_traces_to_samples_question_cohort_and_sources(version):
    root, question = version["root"], version["readmission"]
    record = _record_for(version["sft"], question["id"], "completion", version["right"])
    chain = trace(Layout(root), record["id"])
    assert chain["kind"] == "sft" and [r["id"] for r in chain["records"]] == [record["id"]]
    rows = chain["records"][0]["sides"]["completion"]
    # the same text came from a first-pass sample and from a kept hinted regeneration
    by_source = {r["source"]: r for r in rows}
    assert set(by_source) == {"samples", "regenerated"}
    assert by_source["samples"]["generator"] == GENERATOR
    assert (by_source["samples"]["k_index"], by_source["samples"]["seed"], by_source["samples"]["hinted"]) == (0, 1000, False)
    assert by_source["regenerated"]["hinted"] is True and by_source["regenerated"]["generator"] == HINTED_GENERATOR
    assert by_source["regenerated"]["verdict"] == "kept: correct, no leak" and not by_source["regenerated"]["leaked"]
    assert chain["question"]["id"] == question["id"] and chain["question"]["split"] == "train"
    assert chain["cohort"] == {"task": "readmission", "subject_id": 10, "hadm_id": 100, "visit_index": 0, "label": 1,
                               "cohort_label_convention": "kare", "cohort_file": "data/cohorts/readmission.parquet"}
    admissions = next(t for t in chain["sources"]["tables"] if t["table"] == "admissions")
    assert admissions["md5"] == _md5(root / "src/mimic-iv-demo/hosp/admissions.csv") and admissions["rows_read"] == 2
    assert chain["sources"]["source_lock_md5"] == "d" * 32 + ".dir"
    artifacts = {a["path"]: a for a in chain["artifacts"]}
    assert artifacts["data/questions"]["md5"] == "q" * 32 + ".dir"
    assert artifacts["data/rounds/1/sft.jsonl"]["matches_lock"] is True


def test_registry_record_traces_to_the_hidden_value_and_its_stay_file(version):
    root, question = version["root"], version["masked"]
    record = next(r for r in version["sft"] if r["question_id"] == question["id"])
    chain = trace(Layout(root), record["id"], [1])
    assert chain["cohort"] is None
    assert chain["registry"]["feature"] == "hr_mean" and float(chain["registry"]["masked_value"]) == 92.5
    assert chain["registry"]["subject_id"] == 7
    [stay] = chain["sources"]["files"]
    assert stay["file"].endswith("p000007.psv") and stay["md5"] == _md5(root / "src/sepsis-challenge-2019/training_setB/p000007.psv")


def test_dpo_record_and_question_id_and_unknown_id(version):
    root, question = version["root"], version["readmission"]
    [pair] = version["dpo"]
    chain = trace(Layout(root), pair["id"])
    assert chain["kind"] == "dpo" and set(chain["records"][0]["sides"]) == {"chosen", "rejected"}
    assert [r["correct"] for r in chain["records"][0]["sides"]["rejected"]] == [False]
    by_question = trace(Layout(root), question["id"])
    assert by_question["kind"] == "question"
    assert {r["id"] for r in by_question["records"]} == {r["id"] for r in version["sft"] + version["dpo"]
                                                         if r["question_id"] == question["id"]}
    verdicts = sorted(r["verdict"] for r in by_question["samples_of_question"])
    assert verdicts == ["dropped: leak:told_answer", "first pass", "first pass", "kept: correct, no leak"]
    with pytest.raises(LineageError, match="no SFT/DPO record"):
        trace(Layout(root), "nope")


def test_summary_counts_and_flags_the_untraced_record(version):
    layout = Layout(version["root"])
    summary = {row["kind"]: row for row in lineage_summary(lineage_table(layout, [1]))}
    assert summary["sft"]["records"] == len(version["sft"]) == 3
    assert summary["sft"]["untraced_records"] == ["0" * 16]
    assert summary["sft"]["texts_traced_to_samples"] == 2 and summary["sft"]["texts_from_regenerated"] == 1
    assert summary["sft"]["texts_with_cohort_or_registry_row"] == 3
    assert summary["dpo"] == {**summary["dpo"], "records": 1, "texts": 2, "texts_traced_to_samples": 2,
                              "untraced_records": [], "non_train_questions": 0}


def test_lineage_command_prints_the_chain(version):
    root, question = version["root"], version["readmission"]
    record = _record_for(version["sft"], question["id"], "completion", version["right"])
    result = CliRunner().invoke(app, ["lineage", record["id"], "--root", str(root), "--round", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["cohort"]["visit_index"] == 0
    tree = CliRunner().invoke(app, ["lineage", record["id"], "--root", str(root)])
    assert tree.exit_code == 0 and "visit index 0" in tree.stdout and "kept: correct, no leak" in tree.stdout
    missing = CliRunner().invoke(app, ["lineage", record["id"], "--root", str(root), "--round", "7"])
    assert missing.exit_code == 1
