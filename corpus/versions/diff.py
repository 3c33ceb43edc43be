"""Row-level diff of one artifact between two sides, and the side-level figures around it.

Matching (one artifact, OLD against NEW), all polars joins:

1. Records with the same `id` are **unchanged**: an id is the hash of the
   record's whole content, so the same id is the same record.
2. The rest are matched one-to-one in passes, each an inner join on the pass's
   keys plus a rank (the records sharing those keys, ordered by id), so a
   question with three leftover pairs on each side pairs them off in order:
   - DPO: same (question, chosen text): `prompt_changed` when the rejected
     text is the same too (only the prompt differs), else `rejected_changed`;
     then same (question, rejected text): `chosen_changed`; then same question:
     `both_changed`.
   - SFT: same (question, completion): `prompt_changed`; then same question:
     `completion_changed`.
   - samples / regenerated: same (question, hinted, k_index): `text_changed`
     when the text differs, else `verdict_changed` (regenerated: the leak
     filter's reason differs), else `metadata_changed` (seed, generator, ...).
   - questions: same (task, subject, admission, question text):
     `answer_changed`, else `context_changed`, else `options_changed`.
3. What is left is **removed** (OLD) or **added** (NEW).

Fractions (`--fail-on removed>0.2`) are of OLD's record count.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import polars as pl

from corpus.versions.sides import Side

SCHEMA_VERSION = 1
PERCENTILES = (5, 25, 50, 75, 95)
UNKNOWN = "(unknown)"


@dataclass(frozen=True)
class Pass:
    keys: tuple[str, ...]
    kind: pl.Expr


def _same(column: str) -> pl.Expr:
    return pl.col(column).eq_missing(pl.col(f"{column}_new"))


def _kinds(*cases: tuple[str, str]) -> pl.Expr:
    """The first case whose column differs names the change; the last name is the fallback."""
    *tests, (fallback, _) = cases
    expr = pl.lit(fallback)
    for name, column in reversed(tests):
        expr = pl.when(~_same(column)).then(pl.lit(name)).otherwise(expr)
    return expr


# Per artifact: the text fields (lengths, examples), the hashed columns the passes
# compare, and the passes.
TEXTS = {"dpo": ("chosen", "rejected"), "sft": ("completion",), "samples": ("text",),
         "regenerated": ("text",), "questions": ("context",)}
PASSES = {
    "dpo": (Pass(("question_id", "chosen_h"), pl.when(_same("rejected_h")).then(pl.lit("prompt_changed"))
                 .otherwise(pl.lit("rejected_changed"))),
            Pass(("question_id", "rejected_h"), pl.lit("chosen_changed")),
            Pass(("question_id",), pl.lit("both_changed"))),
    "sft": (Pass(("question_id", "completion_h"), pl.lit("prompt_changed")),
            Pass(("question_id",), pl.lit("completion_changed"))),
    "samples": (Pass(("question_id", "hinted", "k_index"),
                     _kinds(("text_changed", "text_h"), ("metadata_changed", ""))),),
    "regenerated": (Pass(("question_id", "hinted", "k_index"),
                         _kinds(("text_changed", "text_h"), ("verdict_changed", "filter_reason"),
                                ("metadata_changed", ""))),),
    "questions": (Pass(("task", "subject_id", "hadm_id", "question"),
                       _kinds(("answer_changed", "answer"), ("context_changed", "context_h"),
                              ("options_changed", ""))),),
}
CHANGE_KINDS = {
    "dpo": ("chosen_changed", "rejected_changed", "both_changed", "prompt_changed"),
    "sft": ("completion_changed", "prompt_changed"),
    "samples": ("text_changed", "metadata_changed"),
    "regenerated": ("text_changed", "verdict_changed", "metadata_changed"),
    "questions": ("answer_changed", "context_changed", "options_changed"),
}
# The field each kind's example diffs.
EXAMPLE_FIELDS = {"chosen_changed": ("chosen",), "rejected_changed": ("rejected",),
                  "both_changed": ("chosen", "rejected"), "prompt_changed": ("prompt",),
                  "completion_changed": ("completion",), "text_changed": ("text",), "verdict_changed": ("filter_reason",),
                  "metadata_changed": ("generator",), "answer_changed": ("answer",), "context_changed": ("context",),
                  "options_changed": ("options",)}


def normalise(frame: pl.LazyFrame, artifact: str) -> pl.DataFrame:
    """One row per record: ids, the texts and hashes the passes and statistics use (prompts as a hash only)."""
    columns = frame.collect_schema().names()
    if artifact in ("dpo", "sft"):  # sides.read_pair_file has already reduced prompts and messages
        frame = frame.select("id", "question_id", "prompt_h", *TEXTS[artifact],
                             *(f"{t}_chars" for t in TEXTS[artifact]))
    elif artifact == "questions":
        frame = frame.with_columns(pl.col("id").alias("question_id"), pl.col("options").cast(pl.List(pl.String))
                                   .list.join("\n").alias("options"), pl.col("context").hash().alias("context_h"))
    else:
        wanted = [c for c in ("id", "question_id", "task", "hinted", "k_index", "seed", "generator", "text",
                              "correct", "leaked", "leak_rule", "filter_reason") if c in columns]
        frame = frame.select(wanted)
    frame = frame.with_columns(pl.col(t).hash().alias(f"{t}_h") for t in TEXTS[artifact] if t != "context")
    return frame.collect()


def match(old: pl.DataFrame, new: pl.DataFrame, artifact: str) -> dict[str, pl.DataFrame]:
    """unchanged / changed (kind, question_id, old_id, new_id) / added / removed, per the module docstring."""
    unchanged = old.select("id", "question_id").join(new.select("id"), on="id", how="semi")
    keys = sorted({k for p in PASSES[artifact] for k in p.keys} | {"id", "question_id"})
    compared = sorted({c for c in old.columns if c.endswith("_h") or c in ("filter_reason", "answer")} - set(keys))
    left = old.select(*keys, *compared).join(new.select("id"), on="id", how="anti")
    right = new.select(*keys, *compared).join(old.select("id"), on="id", how="anti")
    changed = []
    for step in PASSES[artifact]:
        on = [*step.keys, "_rank"]
        ranked = [side.sort("id").with_columns(pl.int_range(pl.len()).over(list(step.keys)).alias("_rank"))
                  for side in (left, right)]
        pairs = ranked[0].join(ranked[1], on=on, how="inner", suffix="_new", nulls_equal=True)
        pairs = pairs.select(step.kind.alias("kind"), pl.col("question_id"), pl.col("id").alias("old_id"),
                             pl.col("id_new").alias("new_id"))
        changed.append(pairs)
        left = left.join(pairs.select(pl.col("old_id").alias("id")), on="id", how="anti")
        right = right.join(pairs.select(pl.col("new_id").alias("id")), on="id", how="anti")
    changed_frame = pl.concat(changed).sort("kind", "question_id", "old_id")
    return {"unchanged": unchanged, "changed": changed_frame,
            "added": right.select("id", "question_id").sort("question_id", "id"),
            "removed": left.select("id", "question_id").sort("question_id", "id")}


# -- side-level figures --------------------------------------------------------------
def question_labels(questions: pl.LazyFrame | None) -> pl.DataFrame:
    """question id -> task and gold label (the answer's letter, or the whole answer when it has none)."""
    if questions is None:
        return pl.DataFrame(schema={"question_id": pl.String, "task": pl.String, "label": pl.String})
    return questions.select(pl.col("id").alias("question_id"), "task",
                            pl.col("answer").str.splitn(". ", 2).struct.field("field_0").alias("label")).collect()


def task_label_counts(records: pl.DataFrame, labels: pl.DataFrame) -> pl.DataFrame:
    frame = records.select("question_id", *(["task"] if "task" in records.columns else []))
    joined = frame.join(labels, on="question_id", how="left", suffix="_q")
    task = pl.coalesce(*(["task_q"] if "task_q" in joined.columns else []), "task") if "task" in joined.columns \
        else pl.col("task")
    return (joined.select(task.fill_null(UNKNOWN).alias("task"), pl.col("label").fill_null(UNKNOWN))
            .group_by("task", "label").len("n"))


def shifts(old_counts: pl.DataFrame, new_counts: pl.DataFrame) -> tuple[list[dict], list[dict]]:
    """Per (task, label) and per task: counts on each side and the delta."""
    joined = (old_counts.join(new_counts, on=["task", "label"], how="full", coalesce=True, suffix="_new")
              .select("task", "label", pl.col("n").fill_null(0).cast(pl.Int64).alias("old"),
                      pl.col("n_new").fill_null(0).cast(pl.Int64).alias("new"))
              .with_columns((pl.col("new") - pl.col("old")).alias("delta")).sort("task", "label"))
    per_task = (joined.group_by("task").agg(pl.col("old").sum(), pl.col("new").sum())
                .with_columns((pl.col("new") - pl.col("old")).alias("delta")).sort("task"))
    return joined.to_dicts(), per_task.to_dicts()


def length_stats(frame: pl.DataFrame | None, field: str) -> dict | None:
    if frame is None or field not in frame.columns:
        return None
    # characters (code points); the pair files' reader counted them while parsing
    lengths = pl.col(f"{field}_chars") if f"{field}_chars" in frame.columns else pl.col(field).str.len_chars()
    row = frame.select(pl.len().alias("count"), lengths.mean().alias("mean"),
                       *(lengths.quantile(p / 100, "nearest").alias(f"p{p}") for p in PERCENTILES)).row(0, named=True)
    return {k: (None if v is None else (round(v, 1) if k == "mean" else int(v))) for k, v in row.items()}


def hardness(old: Side, new: Side, old_params: dict | None, new_params: dict | None) -> dict | None:
    """Questions that moved between hard (first-pass accuracy <= the side's regenerate.hard_threshold) and easy."""
    def per_side(side: Side, params: dict | None) -> tuple[pl.DataFrame | None, float]:
        threshold = float(((params or {}).get("regenerate") or {}).get("hard_threshold", 0.0) or 0.0)
        scan = side.scan("samples")
        if scan is None:
            return None, threshold
        if "hinted" in scan.collect_schema().names():
            scan = scan.filter(~pl.col("hinted"))
        acc = scan.group_by("question_id").agg(pl.col("correct").cast(pl.Float64).mean().alias("accuracy"))
        return acc.with_columns((pl.col("accuracy") <= threshold).alias("hard")).collect(), threshold

    (old_acc, old_t), (new_acc, new_t) = per_side(old, old_params), per_side(new, new_params)
    if old_acc is None or new_acc is None:
        return None
    both = old_acc.join(new_acc, on="question_id", how="inner", suffix="_new")
    moved = {name: both.filter(cond)["question_id"].sort().to_list() for name, cond in
             (("hard_to_easy", pl.col("hard") & ~pl.col("hard_new")), ("easy_to_hard", ~pl.col("hard") & pl.col("hard_new")))}
    return {"threshold": {"old": old_t, "new": new_t},
            "hard": {"old": int(old_acc["hard"].sum()), "new": int(new_acc["hard"].sum())},
            "questions": {"old": old_acc.height, "new": new_acc.height, "both": both.height}, **moved}


def regeneration(side: Side) -> dict | None:
    """Hinted samples, kept, yield, filter reasons and leak rules of one side's regenerated file."""
    scan = side.scan("regenerated")
    if scan is None:
        return None
    frame = scan.select("filter_reason", *(c for c in ("leaked", "leak_rule") if c in scan.collect_schema().names())) \
        .collect()
    hinted = frame.height
    kept = int(frame["filter_reason"].is_null().sum())
    leak = int(frame["filter_reason"].str.starts_with("leak:").fill_null(False).sum())
    reasons = frame.group_by(pl.col("filter_reason").fill_null("kept")).len("n").sort("filter_reason")
    rules = (frame.filter(pl.col("leaked").fill_null(False)).group_by(pl.col("leak_rule").fill_null(UNKNOWN)).len("n")
             .sort("leak_rule") if "leaked" in frame.columns else pl.DataFrame({"leak_rule": [], "n": []}))
    return {"hinted": hinted, "kept": kept, "yield": round(kept / hinted, 4) if hinted else None,
            "leak_dropped": leak, "leak_drop_rate": round(leak / hinted, 4) if hinted else None,
            "filter_reasons": dict(reasons.iter_rows()), "leak_rules": dict(rules.iter_rows())}


def flatten(params: dict | None, prefix: str = "") -> dict:
    out: dict = {}
    for key, value in (params or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def params_diff(old: dict | None, new: dict | None) -> dict:
    flat_old, flat_new = flatten(old), flatten(new)
    changes = []
    for key in sorted(set(flat_old) | set(flat_new)):
        if key not in flat_new:
            changes.append({"key": key, "change": "removed", "old": flat_old[key], "new": None})
        elif key not in flat_old:
            changes.append({"key": key, "change": "added", "old": None, "new": flat_new[key]})
        elif flat_old[key] != flat_new[key]:
            changes.append({"key": key, "change": "changed", "old": flat_old[key], "new": flat_new[key]})
    return {"available": {"old": old is not None, "new": new is not None}, "changed": changes}


def generators(side: Side) -> dict:
    """Generator fingerprints of a side: those its samples carry and the sample stage's details."""
    found = {}
    for artifact in ("samples", "regenerated"):
        scan = side.scan(artifact)
        found[artifact] = [] if scan is None else \
            scan.select(pl.col("generator").unique()).collect()["generator"].drop_nulls().sort().to_list()
    details = side.sample_details()
    found["details"] = details.get("generator") if isinstance(details, dict) else None
    return found


# -- word-level text diff --------------------------------------------------------------
def word_diff(old: str | None, new: str | None, context: int = 6, max_words: int = 120) -> str:
    """`[-removed-]{+added+}` over words (git --word-diff style); long unchanged runs elided to `…`."""
    a, b = (old or "").split(), (new or "").split()
    parts: list[str] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag == "equal":
            run = a[i1:i2]
            if len(run) > 2 * context:
                head = run[:context] if parts else []
                tail = run[-context:] if i2 < len(a) or j2 < len(b) else []
                run = [*head, "…", *tail]
            parts.extend(run)
        else:
            if i2 > i1:
                parts.append("[-" + " ".join(a[i1:i2]) + "-]")
            if j2 > j1:
                parts.append("{+" + " ".join(b[j1:j2]) + "+}")
    if len(parts) > max_words:
        parts = [*parts[:max_words], "…"]
    return " ".join(parts)
