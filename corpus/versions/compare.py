"""The whole `corpus diff` report of two sides as one JSON-ready dict (schemas/diff_report.schema.json).

diff.py holds the pieces (matching, shifts, lengths, hardness, regeneration,
params, fingerprints, word diffs); this module reads both sides once and puts
them together, with the metrics `--fail-on` gates on (gates.py).
"""

from __future__ import annotations

import polars as pl

from corpus.versions import diff as d
from corpus.versions.sides import Side, SideError


def _load(side: Side, artifact: str, role: str) -> pl.DataFrame:
    scan = side.scan(artifact)
    if scan is None:
        raise SideError(f"{role} side {side.spec!r} ({side.resolved}) has no {artifact} artifact "
                        f"(looked for {side.artifact_source(artifact) or 'it'}); pick another --artifact or side")
    try:
        return d.normalise(scan, artifact)
    except pl.exceptions.PolarsError as error:
        raise SideError(f"{role} side {side.spec!r}: {artifact} from {side.artifact_source(artifact)} does not have "
                        f"the expected columns: {error}") from error


def _examples(kind_rows: dict[str, pl.DataFrame], old: pl.DataFrame, new: pl.DataFrame, sides: tuple[Side, Side],
              artifact: str, per_kind: int) -> list[dict]:
    if per_kind <= 0:
        return []
    examples: list[dict] = []
    first_text = d.TEXTS[artifact][0]
    for kind, rows in kind_rows.items():
        rows = rows.head(per_kind)
        if not rows.height:
            continue
        old_ids = rows["old_id"].to_list() if "old_id" in rows.columns else []
        new_ids = rows["new_id"].to_list() if "new_id" in rows.columns else []
        fields = d.EXAMPLE_FIELDS.get(kind, (first_text,))
        prompts = ({}, {})
        if "prompt" in fields:
            prompts = (sides[0].prompts(artifact, old_ids), sides[1].prompts(artifact, new_ids))
        old_rows = {r["id"]: r for r in old.filter(pl.col("id").is_in(old_ids)).to_dicts()}
        new_rows = {r["id"]: r for r in new.filter(pl.col("id").is_in(new_ids)).to_dicts()}
        for row in rows.iter_rows(named=True):
            before = old_rows.get(row.get("old_id"), {}) | {"prompt": prompts[0].get(row.get("old_id"))}
            after = new_rows.get(row.get("new_id"), {}) | {"prompt": prompts[1].get(row.get("new_id"))}
            for field in fields:
                examples.append({
                    "kind": kind, "question_id": row["question_id"], "old_id": row.get("old_id"),
                    "new_id": row.get("new_id"), "field": field,
                    "diff": d.word_diff(None if before.get(field) is None else str(before[field]),
                                        None if after.get(field) is None else str(after[field])),
                })
    return examples


def _ids(frame: pl.DataFrame, limit: int) -> list:
    return frame.head(limit).to_dicts() if frame.width > 2 else frame.head(limit)["id"].to_list()


def build_report(old_side: Side, new_side: Side, artifact: str = "dpo", examples: int = 3,
                 max_ids: int = 1000) -> dict:
    old, new = _load(old_side, artifact, "OLD"), _load(new_side, artifact, "NEW")
    matched = d.match(old, new, artifact)
    changed = matched["changed"]
    by_kind = {kind: int((changed["kind"] == kind).sum()) for kind in d.CHANGE_KINDS[artifact]}
    counts = {"old": old.height, "new": new.height, "unchanged": matched["unchanged"].height,
              "added": matched["added"].height, "removed": matched["removed"].height, "changed": changed.height}

    old_labels = d.question_labels(old_side.scan("questions"))
    new_labels = d.question_labels(new_side.scan("questions"))
    by_task_label, by_task = d.shifts(d.task_label_counts(old, old_labels), d.task_label_counts(new, new_labels))
    old_params, new_params = old_side.params(), new_side.params()
    regen = {"old": d.regeneration(old_side), "new": d.regeneration(new_side)}

    kind_rows = {"added": matched["added"].select(pl.col("id").alias("new_id"), "question_id"),
                 "removed": matched["removed"].select(pl.col("id").alias("old_id"), "question_id")}
    kind_rows |= {kind: changed.filter(pl.col("kind") == kind) for kind in d.CHANGE_KINDS[artifact]}
    truncated = any(f.height > max_ids for f in (matched["added"], matched["removed"], changed))
    report = {
        "schema_version": d.SCHEMA_VERSION,
        "artifact": artifact,
        "old": old_side.describe() | {"source": old_side.artifact_source(artifact)},
        "new": new_side.describe() | {"source": new_side.artifact_source(artifact)},
        "records": counts | {"changed_by_kind": by_kind},
        "ids": {"added": _ids(matched["added"], max_ids), "removed": _ids(matched["removed"], max_ids),
                "changed": changed.head(max_ids).to_dicts(), "limit": max_ids, "truncated": truncated},
        "by_task": by_task,
        "by_task_label": by_task_label,
        "lengths": {field: {"old": d.length_stats(old, field), "new": d.length_stats(new, field)}
                    for field in d.TEXTS[artifact]},
        "hardness": d.hardness(old_side, new_side, old_params, new_params),
        "regeneration": regen,
        "params": d.params_diff(old_params, new_params),
        "generators": {"old": d.generators(old_side), "new": d.generators(new_side)},
        "examples": _examples(kind_rows, old, new, (old_side, new_side), artifact, examples),
    }
    report["metrics"] = metrics(report)
    return report


def _share_shift(by_task: list[dict]) -> float:
    old_total = sum(r["old"] for r in by_task) or 1
    new_total = sum(r["new"] for r in by_task) or 1
    return round(max((abs(r["new"] / new_total - r["old"] / old_total) for r in by_task), default=0.0), 4)


def metrics(report: dict) -> dict:
    """The figures `--fail-on` can name (gates.py says which are counts, fractions or rates)."""
    records = report["records"]
    regen_old, regen_new = report["regeneration"]["old"] or {}, report["regeneration"]["new"] or {}
    hard = report["hardness"]

    def delta(key: str):
        a, b = regen_old.get(key), regen_new.get(key)
        return None if a is None or b is None else round(b - a, 4)

    counts = {"added": records["added"], "removed": records["removed"], "changed": records["changed"],
              "unchanged": records["unchanged"], **records["changed_by_kind"]}
    return {
        "records_old": records["old"], "records_new": records["new"],
        **{f"{name}_count": n for name, n in counts.items()},
        **{f"{name}_fraction": (round(n / records["old"], 6) if records["old"] else (0.0 if n == 0 else None))
           for name, n in counts.items()},
        "leak_drop_rate": regen_new.get("leak_drop_rate"), "leak_drop_rate_old": regen_old.get("leak_drop_rate"),
        "leak_drop_rate_delta": delta("leak_drop_rate"),
        "regeneration_yield": regen_new.get("yield"), "regeneration_yield_old": regen_old.get("yield"),
        "regeneration_yield_delta": delta("yield"),
        "hard_to_easy": len(hard["hard_to_easy"]) if hard else None,
        "easy_to_hard": len(hard["easy_to_hard"]) if hard else None,
        "hard_questions": hard["hard"]["new"] if hard else None,
        "params_changed": len(report["params"]["changed"]),
        "max_task_share_shift": _share_shift(report["by_task"]),
    }


def run(old: str, new: str, artifact: str = "dpo", as_json: bool = False, markdown: bool = False,
        fail_on: list[str] | None = None, examples: int = 3, round_: str | None = None, repo=".",
        max_ids: int = 1000) -> int:
    """`corpus diff`: print the report; the exit code is 1 when a --fail-on threshold trips, 2 on an error."""
    import json
    import sys
    from pathlib import Path

    from rich.console import Console

    from corpus.errors import CorpusError
    from corpus.versions import gates, report as render
    from corpus.versions.sides import resolve_side

    err = Console(stderr=True)
    try:
        sides = [resolve_side(spec, Path(repo), round_, artifact) for spec in (old, new)]
        result = build_report(*sides, artifact=artifact, examples=examples, max_ids=max_ids)
        result["fail_on"] = gates.evaluate(list(fail_on or []), result["metrics"])
    except CorpusError as error:
        err.print(f"[red]corpus diff: {error}[/]", markup=True, highlight=False)
        return 2
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2, ensure_ascii=False, default=str) + "\n")
    elif markdown:
        sys.stdout.write(render.render_markdown(result) + "\n")
    else:
        render.render_rich(result, Console())
    tripped = [g for g in result["fail_on"] if g["tripped"]]
    for gate in tripped:
        err.print(f"corpus diff: --fail-on {gate['expr']} tripped: {gate['metric']} = {gate['value']}",
                  markup=False, highlight=False)
    return 1 if tripped else 0
