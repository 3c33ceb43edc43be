"""Row-level lineage: every SFT and DPO record traced back to what it was made from.

    record            data/rounds/<r>/sft.jsonl | dpo.jsonl (id, question_id, texts)
    -> sample rows    data/rounds/<r>/samples.parquet (first pass) and regenerated.parquet
                      (hinted, with the leak filter's verdict: leaked, leak_rule, filter_reason),
                      matched on question_id and text: the pairs stage copies a sample's text
                      verbatim, so equal text under the same question is the sample it came from
                      (several rows when the generator said the same thing twice)
    -> question       data/questions/<split>.parquet
    -> cohort row     data/cohorts/<task>.parquet on (task, subject_id, hadm_id): visit index,
                      label, label convention; or, for task masked_value, the registry row
                      (data/warehouse/registry.parquet) and the hidden feature's value. The
                      feature is read back from the question text with the wording template,
                      because the question record does not store it.
    -> sources        the ingest report and the source files the row was built from, each with
                      its md5 (hashed here: DVC keeps no per-file manifest of a dependency), and
                      the dvc.lock md5 of every artifact on the way.

Everything is polars joins over whole tables; `trace` filters them down to one record.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import polars as pl

from corpus.errors import CorpusError, SourceError
from corpus.versions.layout import Layout, artifact_records, file_md5, lock_entries, round_artifact_paths

MESSAGES = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
PAIR_SCHEMAS = {
    "sft": {"id": pl.String, "question_id": pl.String, "prompt": MESSAGES, "completion": MESSAGES},
    "dpo": {"id": pl.String, "question_id": pl.String, "prompt": MESSAGES, "chosen": MESSAGES, "rejected": MESSAGES},
}
TEXT_SIDES = {"sft": ("completion",), "dpo": ("chosen", "rejected")}
SAMPLE_FIELDS = ("generator", "seed", "k_index", "hinted", "predicted", "correct", "parse_status",
                 "leaked", "leak_rule", "filter_reason")
REGISTRY_TASK = "masked_value"
# The cohort SQL: a spec table named in it is a source of every cohort row.
COHORT_SQL = ("visit_lists.sql", "cohort_visits.sql", "label_mortality.sql", "label_readmission.sql", "label_los.sql")


class LineageError(CorpusError):
    """An id that no record or question of the version has."""


def read_pairs(path: Path, kind: str) -> pl.DataFrame:
    """A pair file as a frame with TRL's conversational columns (empty file: no rows)."""
    schema = PAIR_SCHEMAS[kind]
    if not path.is_file() or path.stat().st_size == 0:
        return pl.DataFrame(schema=schema)
    try:
        frame = pl.read_ndjson(path, schema=schema)
    except pl.exceptions.PolarsError as exc:
        raise SourceError(f"{path}: expected TRL conversational JSON lines ({', '.join(schema)}): {exc}") from None
    if frame["id"].null_count() or frame["question_id"].null_count():
        raise SourceError(f"{path}: {frame['id'].null_count()} record(s) without id, "
                          f"{frame['question_id'].null_count()} without question_id")
    return frame


def record_texts(layout: Layout, rounds: list[int]) -> pl.DataFrame:
    """One row per (round, record, text side): round, kind, record_id, question_id, side, text."""
    frames = []
    for round_ in rounds:
        for kind, sides in TEXT_SIDES.items():
            records = read_pairs(layout.round_dir(round_) / f"{kind}.jsonl", kind)
            for side in sides:
                frames.append(records.select(
                    pl.lit(round_, pl.Int64).alias("round"), pl.lit(kind).alias("kind"),
                    pl.col("id").alias("record_id"), "question_id", pl.lit(side).alias("side"),
                    pl.col(side).list.last().struct.field("content").alias("text"),
                ))
    schema = {"round": pl.Int64, "kind": pl.String, "record_id": pl.String, "question_id": pl.String,
              "side": pl.String, "text": pl.String}
    return pl.concat(frames) if frames else pl.DataFrame(schema=schema)


def sample_pool(layout: Layout, rounds: list[int]) -> pl.DataFrame:
    """First-pass and regenerated sample rows of the rounds, with a `source` column and the filter's verdict."""
    frames = []
    for round_ in rounds:
        for source in ("samples", "regenerated"):
            path = layout.round_dir(round_) / f"{source}.parquet"
            if not path.is_file():
                if source == "samples":
                    raise SourceError(f"{path}: not found (the round's pair files need their samples)")
                continue
            frame = pl.read_parquet(path)
            for name in ("leak_rule", "filter_reason"):
                if name not in frame.columns:
                    frame = frame.with_columns(pl.lit(None, pl.String).alias(name))
            frames.append(frame.select(
                pl.lit(round_, pl.Int64).alias("round"), pl.lit(source).alias("source"),
                pl.col("id").alias("sample_id"), "question_id", "text",
                *[pl.col(c).cast(t) for c, t in (("generator", pl.String), ("seed", pl.Int64), ("k_index", pl.Int64),
                                                 ("hinted", pl.Boolean), ("predicted", pl.String),
                                                 ("correct", pl.Boolean), ("parse_status", pl.String),
                                                 ("leaked", pl.Boolean), ("leak_rule", pl.String),
                                                 ("filter_reason", pl.String))],
            ))
    pool = pl.concat(frames)
    # first pass rows go straight in; regenerated ones only when the filter kept them
    verdict = (pl.when(pl.col("source") == "samples").then(pl.lit("first pass"))
               .when(pl.col("filter_reason").is_null()).then(pl.lit("kept: correct, no leak"))
               .otherwise(pl.lit("dropped: ") + pl.col("filter_reason")))
    return pool.with_columns(verdict.alias("verdict"))


def questions_frame(layout: Layout) -> pl.DataFrame:
    files = sorted(layout.questions.glob("*.parquet"))
    if not files:
        raise SourceError(f"{layout.questions}: no question parquet files (run the questions stage)")
    return pl.concat([pl.read_parquet(f).drop("context", "options", strict=False) for f in files], how="diagonal_relaxed")


def cohort_rows(layout: Layout) -> pl.DataFrame:
    """Every task's cohort rows with the file they are in (visits.parquet, the shared history, is no cohort)."""
    frames = []
    for path in sorted(layout.cohorts.glob("*.parquet")):
        frame = pl.read_parquet(path)
        if {"task", "subject_id", "hadm_id", "label"} <= set(frame.columns):
            frames.append(frame.select("task", "subject_id", "hadm_id", "visit_index", "label",
                                       pl.col("label_convention").alias("cohort_label_convention"),
                                       pl.lit(layout.rel(path)).alias("cohort_file")))
    schema = {"task": pl.String, "subject_id": pl.Int64, "hadm_id": pl.Int64, "visit_index": pl.Int64,
              "label": pl.Int32, "cohort_label_convention": pl.String, "cohort_file": pl.String}
    return pl.concat(frames, how="vertical_relaxed") if frames else pl.DataFrame(schema=schema)


def _literal_regex(text: str) -> str:
    return re.sub(r"([\\.^$|?*+()\[\]{}])", r"\\\1", text)


def _hidden_feature_patterns(layout: Layout) -> list[str]:
    """Regexes that read the readable name back out of a masked-value question's first line."""
    from corpus.questions.masked_value import load_template

    local = layout.root / "corpus" / "templates" / "masked_value_question.txt"
    path = local if local.is_file() else Path(str(resources.files("corpus").joinpath("templates", "masked_value_question.txt")))
    template = load_template(path)
    patterns = []
    for part in ("question_numeric", "question_categorical"):
        first = template.get(part, "").splitlines()[0] if template.get(part) else ""
        if "{readable}" in first:
            head, _, tail = first.partition("{readable}")
            tail = tail.split("{", 1)[0]  # anything after another placeholder is not needed to anchor
            patterns.append("^" + _literal_regex(head) + "(.+?)" + _literal_regex(tail))
    return patterns


def registry_rows(layout: Layout, questions: pl.DataFrame) -> pl.DataFrame:
    """question_id -> registry row: feature (column name), masked_value (as text), registry_file, source_file."""
    from corpus.registry.spec import load_registry_spec

    schema = {"question_id": pl.String, "feature": pl.String, "masked_value": pl.String}
    asked = questions.filter(pl.col("task") == REGISTRY_TASK).select(pl.col("id").alias("question_id"), "subject_id",
                                                                    "question")
    if not asked.height or not layout.registry.is_file():
        return pl.DataFrame(schema=schema)
    params = layout.params()
    spec = load_registry_spec(layout.resolve((params.get("registry") or {}).get("spec", "schemas/registry_sepsis.yaml")))
    readable = pl.DataFrame({"readable": [c.readable for c in spec.columns], "feature": [c.name for c in spec.columns]})
    first_line = pl.col("question").str.split("\n").list.first()
    extracted = [first_line.str.extract(p, 1) for p in _hidden_feature_patterns(layout)]
    asked = asked.with_columns(pl.coalesce(*extracted).alias("readable") if extracted else pl.lit(None, pl.String).alias("readable"))
    asked = asked.join(readable, on="readable", how="left")
    ids = spec.id_column.name
    wanted = asked["subject_id"].unique()
    table = pl.read_parquet(layout.registry).filter(pl.col(ids).is_in(wanted.implode()))
    long = table.select(pl.col(ids).alias("subject_id"), pl.exclude(ids).cast(pl.String)).unpivot(
        index="subject_id", variable_name="feature", value_name="masked_value")
    return asked.join(long, on=["subject_id", "feature"], how="left").select(
        "question_id", "feature", "masked_value", pl.lit(layout.rel(layout.registry)).alias("registry_file"))


def lineage_table(layout: Layout, rounds: list[int]) -> pl.DataFrame:
    """One row per (record, text side, matching sample row), with the question and cohort / registry row.

    A text with no matching sample row keeps one row with null sample columns: untraced.
    """
    texts = record_texts(layout, rounds)
    joined = texts.join(sample_pool(layout, rounds), on=["round", "question_id", "text"], how="left")
    questions = questions_frame(layout)
    joined = joined.join(
        questions.select(pl.col("id").alias("question_id"), "task", "split", "subject_id", "hadm_id", "answer",
                         "label_convention"), on="question_id", how="left")
    joined = joined.join(cohort_rows(layout), on=["task", "subject_id", "hadm_id"], how="left")
    registry = registry_rows(layout, questions.filter(pl.col("id").is_in(texts["question_id"].unique().implode())))
    return joined.join(registry, on="question_id", how="left").drop("text")


def lineage_summary(table: pl.DataFrame) -> list[dict]:
    """Per round and kind: records, how many texts trace to an eligible sample row, by source and generator."""
    eligible = pl.col("verdict").is_in(["first pass", "kept: correct, no leak"])
    per_text = table.group_by("round", "kind", "record_id", "side").agg(
        eligible.any().alias("traced"),
        ((pl.col("source") == "regenerated") & eligible).any().alias("from_regenerated"),
        (pl.col("cohort_file").is_not_null() | pl.col("masked_value").is_not_null()).any().alias("row_found"),
        pl.col("split").first().alias("split"),
    )
    summary = []
    for (round_, kind), group in sorted(per_text.group_by("round", "kind"), key=lambda item: item[0]):
        rows = table.filter((pl.col("round") == round_) & (pl.col("kind") == kind) & eligible)
        generators = {g: n for g, n in rows.unique(["record_id", "side", "generator"]).group_by("generator").len()
                      .sort("generator").iter_rows()}
        untraced = group.filter(~pl.col("traced"))["record_id"].unique().sort().to_list()
        summary.append({
            "round": round_, "kind": kind, "records": group["record_id"].n_unique(), "texts": group.height,
            "texts_traced_to_samples": int(group["traced"].sum()),
            "texts_from_regenerated": int(group["from_regenerated"].sum()),
            "texts_with_cohort_or_registry_row": int(group["row_found"].sum()),
            "non_train_questions": int((group["split"].fill_null("missing") != "train").sum()),
            "texts_by_generator": generators,
            "untraced_records": untraced[:20],
        })
    return summary


def _source_tables(layout: Layout, params: dict, details: dict) -> list[dict]:
    """The MIMIC source files the cohort SQL reads, with their md5 and the ingest counts."""
    from corpus.ingest.mimic import find_table_file
    from corpus.ingest.table_spec import load_table_spec

    mimic = params.get("mimic") or {}
    source = layout.resolve(mimic.get("source", ""))
    sql = " ".join(Path(str(resources.files("corpus").joinpath("sql", name))).read_text(encoding="utf-8")
                   for name in COHORT_SQL)
    tables = []
    for spec in load_table_spec(layout.resolve(mimic.get("table_spec", "schemas/mimic_tables.yaml"))):
        if not re.search(rf"\b{re.escape(spec.name)}\b", sql):
            continue
        path = find_table_file(source, spec) if source.is_dir() else None
        counts = (details.get("tables") or {}).get(spec.name, {})
        tables.append({"table": spec.name, "source_file": None if path is None else path.as_posix(),
                       "md5": None if path is None else file_md5(path),
                       "rows_read": counts.get("rows_read"), "rows_written": counts.get("rows_written")})
    return tables


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def source_chain(layout: Layout, task: str, subject_id: int | None) -> dict:
    """Ingest report and source files behind one question's row, and the dvc.lock hash of each source."""
    params = layout.params()
    entries = lock_entries(layout)
    if task == REGISTRY_TASK:
        source = (params.get("registry") or {}).get("source", "")
        folder = layout.resolve(source)
        stay = sorted(folder.glob(f"p*{subject_id}.psv")) if folder.is_dir() and subject_id is not None else []
        stay = [p for p in stay if re.fullmatch(rf"p0*{subject_id}\.psv", p.name)]
        return {"source": source, "source_lock_md5": (entries.get(Path(source).as_posix()) or {}).get("md5"),
                "files": [{"file": p.as_posix(), "md5": file_md5(p)} for p in stay]}
    source = (params.get("mimic") or {}).get("source", "")
    return {"source": source, "source_lock_md5": (entries.get(Path(source).as_posix()) or {}).get("md5"),
            "open_data": bool((params.get("mimic") or {}).get("open_data", False)),
            "ingest_report": {"file": layout.rel(layout.ingest_report), **_read_json(layout.ingest_report)},
            "tables": _source_tables(layout, params, _read_json(layout.ingest_details))}


def _artifacts(layout: Layout, task: str, rounds: list[int]) -> list[dict]:
    paths = ["data/questions", "data/warehouse/registry.parquet" if task == REGISTRY_TASK else "data/cohorts"]
    if task != REGISTRY_TASK:
        paths.append("data/warehouse/mimic")
    return artifact_records(layout, paths + round_artifact_paths(rounds))


def _clean(row: dict) -> dict:
    return {k: v for k, v in row.items() if v is not None}


def trace(layout: Layout, record_id: str, rounds: list[int] | None = None) -> dict:
    """The chain of one SFT/DPO record (or of one question and every record and sample row made from it)."""
    rounds = rounds or layout.rounds()
    table = lineage_table(layout, rounds)
    mine = table.filter(pl.col("record_id") == record_id)
    kind = mine["kind"][0] if mine.height else None
    questions = questions_frame(layout)
    if mine.height:
        question_id = mine["question_id"][0]
    elif questions.filter(pl.col("id") == record_id).height:
        kind, question_id = "question", record_id
        mine = table.filter(pl.col("question_id") == question_id)
    else:
        raise LineageError(f"{record_id}: no SFT/DPO record in round(s) {rounds} of {layout.root} "
                           f"and no question with that id in {layout.questions}")
    question = questions.filter(pl.col("id") == question_id).to_dicts()[0]
    records = []
    for (rid, rkind, rround), group in sorted(mine.group_by("record_id", "kind", "round"), key=lambda g: (g[0][2], g[0][0])):
        if rid is None:
            continue
        sides = {side: [_clean({k: row[k] for k in ("source", "sample_id", *SAMPLE_FIELDS, "verdict")})
                        for row in rows.sort("source", "sample_id").to_dicts() if row["sample_id"] is not None]
                 for (side,), rows in sorted(group.group_by("side"), key=lambda g: g[0])}
        records.append({"id": rid, "kind": rkind, "round": rround, "sides": sides})
    pool = sample_pool(layout, rounds).filter(pl.col("question_id") == question_id).drop("text")
    cohort = None
    if question["task"] != REGISTRY_TASK:
        found = cohort_rows(layout).filter((pl.col("task") == question["task"]) & (pl.col("subject_id") == question["subject_id"])
                                           & (pl.col("hadm_id") == question["hadm_id"]))
        cohort = found.to_dicts()[0] if found.height else None
    registry = None
    if question["task"] == REGISTRY_TASK:
        found = registry_rows(layout, questions.filter(pl.col("id") == question_id))
        registry = {**found.to_dicts()[0], "subject_id": question["subject_id"]} if found.height else None
    return {
        "query": record_id, "kind": kind, "rounds": rounds,
        "records": records,
        "question": {k: question.get(k) for k in ("id", "task", "split", "subject_id", "hadm_id", "answer",
                                                    "label_convention", "template_hash")},
        "cohort": cohort, "registry": registry,
        "samples_of_question": pool.sort("round", "source", "sample_id").to_dicts() if kind == "question" else None,
        "sources": source_chain(layout, question["task"], question["subject_id"]),
        "artifacts": _artifacts(layout, question["task"], rounds),
    }
