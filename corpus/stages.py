"""What each DVC stage does, given params.yaml: shared by stages/*.py and the CLI."""

from __future__ import annotations

import logging
from pathlib import Path

from corpus import cohorts as cohorts_mod
from corpus.config import (
    cohort_config,
    duckdb_config,
    load_params,
    masked_value_config,
    mimic_config,
    questions_config,
    registry_config,
    pairs_config,
    regenerate_config,
    rounds_config,
    sample_config,
)
import polars as pl

from corpus.atomic import atomic_path, write_json
from corpus.errors import ConfigError
from corpus.ingest.mimic import ingest_mimic
from corpus.validate import require_valid

log = logging.getLogger(__name__)

WAREHOUSE = Path("data/warehouse")
MIMIC_WAREHOUSE = WAREHOUSE / "mimic"
INGEST_REPORT = WAREHOUSE / "ingest_report.json"
COHORTS = Path("data/cohorts")
COHORTS_SUMMARY = Path("metrics/cohorts.json")
REGISTRY = WAREHOUSE / "registry.parquet"
REGISTRY_SUMMARY = Path("metrics/registry.json")
QUESTIONS = Path("data/questions")
QUESTIONS_SUMMARY = Path("metrics/questions.json")
BASE_MODEL = Path("models/base")
# Beside each stage's DVC metrics (the few headline figures): its detailed
# statistics (not metrics) and its plot data (dvc.yaml `plots:`).
DETAILS = Path("metrics/details")
PLOTS = Path("metrics/plots")


def round_dir(round_: int) -> Path:
    return Path("data/rounds") / str(round_)


def run_ingest(params_path: Path = Path("params.yaml")) -> dict:
    params = load_params(params_path)
    mimic = mimic_config(params)
    report = ingest_mimic(
        source=mimic.source,
        table_spec=mimic.table_spec,
        out=MIMIC_WAREHOUSE,
        report_path=INGEST_REPORT,
        db=duckdb_config(params),
        progress=lambda table: log.info("ingest %s", table),
        details_path=DETAILS / "ingest.json",
    )
    for table, entry in report["tables"].items():
        if entry["rows_excluded"]:
            log.warning("%s: %d row(s) excluded: %s", table, entry["rows_excluded"], entry["excluded"])
    return report


def run_cohorts(params_path: Path = Path("params.yaml")) -> dict:
    params = load_params(params_path)
    from corpus.stats import cohort_metrics

    summary = cohorts_mod.build_cohorts(
        warehouse=MIMIC_WAREHOUSE,
        out=COHORTS,
        summary_path=DETAILS / "cohorts.json",
        config=cohort_config(params), db=duckdb_config(params)
    )
    write_json(COHORTS_SUMMARY, cohort_metrics(summary))
    for task, entry in summary["tasks"].items():
        log.info("cohort %s: %d samples, labels %s", task, entry["samples"], entry["by_label"])
    return summary


def run_registry(params_path: Path = Path("params.yaml")) -> dict:
    """registry.source is either the sepsis challenge folder (hourly .psv files, summarised
    per stay) or any registry table (.csv, .csv.gz, .parquet; one row per patient) that
    registry.spec describes, checked and copied as typed parquet."""
    from corpus.registry.build import build_sepsis_registry, load_registry
    from corpus.stats import registry_metrics, write_stage_figures

    params = load_params(params_path)
    registry = registry_config(params)
    if registry.source.is_file():
        table = load_registry(registry.source, registry.spec)
        with atomic_path(REGISTRY) as tmp:
            table.write_parquet(tmp, compression="zstd")
        summary = {"source_files": 1, "rows": table.height, "columns": table.width}
        log.info("registry: %d rows from %s", table.height, registry.source)
    else:
        summary = build_sepsis_registry(
            registry.source, registry.spec, REGISTRY, registry.window_hours, duckdb_config(params)
        )
        log.info("registry: %d stays, %d with sepsis", summary["stays"], summary["sepsis_stays"])
    write_stage_figures(REGISTRY_SUMMARY, registry_metrics(summary), DETAILS / "registry.json", summary)
    return summary


def _registry_questions(params: dict) -> list[dict]:
    from corpus.questions.masked_value import build_masked_value_questions
    from corpus.registry.build import load_registry
    from corpus.registry.spec import load_registry_spec

    config = masked_value_config(params)
    if config is None:
        return []
    registry = registry_config(params)
    return build_masked_value_questions(
        load_registry(REGISTRY, registry.spec),
        load_registry_spec(registry.spec),
        config,
        note_values={"window_hours": registry.window_hours},
    )


def run_questions(params_path: Path = Path("params.yaml")) -> dict:
    from corpus.questions.mimic import build_mimic_questions
    from corpus.questions.question_sets import publish_question_sets
    from corpus.stats import question_metrics, question_plot_rows, question_stats, write_stage_figures

    params = load_params(params_path)
    config = questions_config(params)
    questions = build_mimic_questions(COHORTS, config.policies, cohort_config(params), config.seed, config.wording)
    questions += _registry_questions(params)
    frame = publish_question_sets(questions, config.policies, config.split_fractions, config.seed, QUESTIONS)
    summary = question_stats(frame)
    plots = {PLOTS / name: data for name, data in question_plot_rows(frame).items()}
    write_stage_figures(QUESTIONS_SUMMARY, question_metrics(summary), DETAILS / "questions.json", summary, plots)
    log.info("questions: %s", summary["by_split"])
    return summary


def run_base_model(params_path: Path = Path("params.yaml")) -> dict:
    from corpus.models.base import prepare_base_model

    params = load_params(params_path)
    source = str((params.get("base_model") or {}).get("source", "smollm2-135m-instruct-gguf"))
    provenance = prepare_base_model(source, BASE_MODEL)
    log.info("base model: %s -> %s", source, BASE_MODEL)
    return provenance


def train_questions(config, questions_dir: Path = QUESTIONS) -> list[dict]:
    """The train questions this host samples: task filter, the first `limit` by id, then its shard.
    The shard comes last so that the n shards split exactly the questions of one unsharded run
    (their merged caches then answer that run without generating)."""
    frame = pl.read_parquet(questions_dir / "train.parquet").sort("id")
    if config.tasks:
        frame = frame.filter(pl.col("task").is_in(list(config.tasks)))
    if config.limit:
        frame = frame.head(config.limit)
    if config.num_shards > 1:
        shard_of = frame["id"].map_elements(lambda i: int(i[:8], 16) % config.num_shards, return_dtype=pl.Int64)
        frame = frame.filter(shard_of == config.shard)
    return frame.to_dicts()


def build_generator(config, model_path: Path, template_hash: str):
    from corpus.generate.auto_backend import resolve_backend
    from corpus.generate.backends import (
        OpenAICompatibleGenerator,
        SamplingConfig,
        TransformersGenerator,
        VLLMGenerator,
    )

    sampling = SamplingConfig(config.temperature, config.top_p, config.max_new_tokens)
    backend, family = resolve_backend(config.backend)
    if config.backend == "auto":
        log.info("sample.backend auto -> %s (CPU family %s, corpus/templates/backend_defaults.yaml)", backend, family)
    if backend == "vllm":
        return VLLMGenerator(model_path, sampling, template_hash)
    if backend == "openai":
        o = config.openai
        return OpenAICompatibleGenerator(o.base_url, o.model, sampling, template_hash, revision=o.revision,
                                         concurrency=o.concurrency, attempts=o.attempts, timeout=o.timeout)
    if backend == "openvino":
        from corpus.generate.openvino_backend import OpenVINOGenerator, ensure_ir

        v = config.openvino
        return OpenVINOGenerator(model_path, sampling, template_hash,
                                 ir_dir=ensure_ir(model_path, v.weight_format, v.export_cache),
                                 weight_format=v.weight_format, threads=v.threads,
                                 inference_precision=v.inference_precision, kv_cache_precision=v.kv_cache_precision,
                                 max_num_batched_tokens=v.max_num_batched_tokens, max_num_seqs=v.max_num_seqs,
                                 cache_size_gb=v.cache_size_gb, cpu_family=family)
    t = config.transformers
    return TransformersGenerator(model_path, sampling, template_hash, max_batch_tokens=t.max_batch_tokens,
                                 max_rows=t.max_rows, threads=t.threads, dtype=t.dtype)


def run_sample(round_: int, params_path: Path = Path("params.yaml"), shard: int | None = None,
               num_shards: int | None = None, cache: Path | None = None) -> dict:
    """Stage sample@<round>: k samples per train question -> data/rounds/<r>/samples.parquet + metrics.
    `cache` overrides sample.cache: each host of a sharded run writes its own file (SQLite must
    not be shared over a network file system), joined afterwards by `corpus cache merge`."""
    import dataclasses

    from corpus.generate.cache import GenerationCache
    from corpus.generate.prompts import sampling_template
    from corpus.generate.sampling import sample_questions, sample_stats
    from corpus.stats import sample_metrics, sample_plot_rows, write_stage_figures

    params = load_params(params_path)
    config = sample_config(params)
    if shard is not None or num_shards is not None:
        config = dataclasses.replace(config, shard=shard or 0, num_shards=num_shards or 1)
    if cache is not None:
        config = dataclasses.replace(config, cache=Path(cache))
    rounds = rounds_config(params)
    if round_ not in rounds:
        raise ConfigError(f"params.yaml rounds: no entry for round {round_} (have {sorted(rounds)})")
    template = sampling_template()
    questions = train_questions(config)
    generator = build_generator(config, rounds[round_].generator, template.hash)
    cache = GenerationCache(config.cache)
    try:
        frame, report = sample_questions(
            questions, generator, cache, template, k=config.k, round_=round_, round_seed=config.seed
        )
    finally:
        cache.close()
    stats = sample_stats(frame, report)
    require_valid(frame, "samples", f"round {round_} samples")
    out = round_dir(round_)
    name = "samples.parquet" if config.num_shards == 1 else f"samples.shard-{config.shard}-of-{config.num_shards}.parquet"
    with atomic_path(out / name) as tmp:
        frame.write_parquet(tmp, compression="zstd")
    write_stage_figures(Path("metrics") / f"sample-{round_}.json", sample_metrics(stats),
                        DETAILS / f"sample-{round_}.json", stats,
                        {PLOTS / f"sample-{round_}_accuracy.csv": sample_plot_rows(stats)})
    log.info("round %d: %d samples (%d cached, %d generated), accuracy %.3f",
             round_, frame.height, report.cached, report.generated, stats["accuracy"])
    return stats


def hard_question_ids(samples: pl.DataFrame, threshold: float) -> set[str]:
    """Questions whose first-pass accuracy is at or below `threshold`."""
    accuracy = samples.group_by("question_id").agg(pl.col("correct").mean().alias("accuracy"))
    return set(accuracy.filter(pl.col("accuracy") <= threshold)["question_id"].to_list())


def filter_regenerated(frame: pl.DataFrame, questions: dict[str, dict], rules_path: Path | None,
                       template) -> pl.DataFrame:
    """Mark each hinted sample: leaked (and which rule), and why it is dropped (null: kept)."""
    from corpus.generate.prompts import hint_text
    from corpus.leaks import LeakFilter, LeakRules

    leak_filter = LeakFilter(LeakRules.load(rules_path))
    leaked, rules, reasons = [], [], []
    for row in frame.iter_rows(named=True):
        question = questions[row["question_id"]]
        hint = hint_text(template, question["answer"], list(question["options"]))
        verdict = leak_filter.check(row["text"], hint, question["answer"])
        leaked.append(verdict.leak)
        rules.append(verdict.rule)
        if verdict.leak:
            reasons.append(f"leak:{verdict.rule}")
        elif row["predicted"] is None:
            reasons.append(f"no answer ({row['parse_status']})")
        elif not row["correct"]:
            reasons.append("wrong answer")
        else:
            reasons.append(None)
    return frame.with_columns(
        pl.Series("leaked", leaked, dtype=pl.Boolean),
        pl.Series("leak_rule", rules, dtype=pl.String),
        pl.Series("filter_reason", reasons, dtype=pl.String),
    )


def run_regenerate(round_: int, params_path: Path = Path("params.yaml")) -> dict:
    """Stage regenerate@<round>: hard questions re-sampled with the gold answer as a hint, leaks dropped."""
    from corpus.generate.cache import GenerationCache
    from corpus.generate.prompts import hint_template
    from corpus.generate.sampling import sample_questions

    params = load_params(params_path)
    config = sample_config(params)
    regen = regenerate_config(params)
    samples = pl.read_parquet(round_dir(round_) / "samples.parquet")
    hard_ids = hard_question_ids(samples, regen.hard_threshold)
    questions = {q["id"]: q for q in train_questions(config) if q["id"] in hard_ids}
    template = hint_template()
    generator = build_generator(config, rounds_config(params)[round_].generator, template.hash)
    cache = GenerationCache(config.cache)
    try:
        frame, report = sample_questions(
            list(questions.values()), generator, cache, template, k=regen.k or config.k, round_=round_,
            round_seed=config.seed, hinted=True, description="regenerating (hinted)",
        )
    finally:
        cache.close()
    frame = filter_regenerated(frame, questions, regen.leak_rules, template)
    require_valid(frame, "samples", f"round {round_} regenerated samples")
    require_valid(frame.with_columns(pl.col("filter_reason").is_null().alias("kept")), "regenerated",
                  f"round {round_} regenerated samples")
    with atomic_path(round_dir(round_) / "regenerated.parquet") as tmp:
        frame.write_parquet(tmp, compression="zstd")
    kept = frame.filter(pl.col("filter_reason").is_null()).height
    log.info("round %d: %d hard question(s), %d hinted sample(s), %d kept", round_, len(hard_ids), frame.height, kept)
    return {"hard_questions": len(hard_ids), "samples": frame.height, "kept": kept,
            "generation": report.as_dict()}


def run_pairs(round_: int, params_path: Path = Path("params.yaml")) -> dict:
    """Stage pairs@<round>: SFT records and DPO pairs (TRL conversational JSONL) + pairs_stats.json."""
    from corpus.atomic import canonical_json
    from corpus.generate.prompts import sampling_template
    from corpus.pairs import (
        dpo_records, drop_counts, guard_contamination, headline_stats, length_quantiles, pairs_details, pairs_stats,
        sft_records,
    )
    from corpus.stats import write_stage_figures

    params = load_params(params_path)
    config = pairs_config(params)
    regen = regenerate_config(params)
    folder = round_dir(round_)
    samples = pl.read_parquet(folder / "samples.parquet")
    regenerated = pl.read_parquet(folder / "regenerated.parquet")
    train = pl.read_parquet(QUESTIONS / "train.parquet")
    questions = {q["id"]: q for q in train.to_dicts()}
    held_out = pl.concat([pl.read_parquet(QUESTIONS / f"{s}.parquet") for s in ("val", "test")])
    template = sampling_template()
    kept = regenerated.filter(pl.col("filter_reason").is_null()).select(samples.columns)
    correct_pool = pl.concat([samples, kept])
    sft = sft_records(correct_pool, questions, template, config)
    dpo = dpo_records(correct_pool, samples, questions, template, config)
    guard_contamination(sft, questions, held_out, f"{folder}/sft.jsonl")
    guard_contamination(dpo, questions, held_out, f"{folder}/dpo.jsonl")
    require_valid(records_frame(sft, "completion"), "sft", f"{folder}/sft.jsonl")
    require_valid(records_frame(dpo, "chosen"), "dpo", f"{folder}/dpo.jsonl")
    for name, records in (("sft.jsonl", sft), ("dpo.jsonl", dpo)):
        with atomic_path(folder / name) as tmp:
            tmp.write_text("".join(canonical_json(r) + "\n" for r in records), encoding="utf-8")
    stats = pairs_stats(sft, dpo, samples, regenerated, hard_question_ids(samples, regen.hard_threshold),
                        drop_counts(correct_pool, samples, config))
    for side in ("chosen", "rejected"):
        with atomic_path(folder / "pairs_plots" / f"{side}_lengths.csv") as tmp:
            tmp.write_text(length_quantiles(dpo, side), encoding="utf-8")
    write_stage_figures(folder / "pairs_stats.json", headline_stats(stats), folder / "pairs_details.json",
                        {**pairs_details(sft, dpo, questions, correct_pool, regenerated, config.min_rationale_chars),
                         "stats": stats})
    log.info("round %d: %d SFT record(s), %d DPO pair(s)", round_, len(sft), len(dpo))
    return stats


def records_frame(records: list[dict], answer_field: str) -> pl.DataFrame:
    """Pair records flattened for their data contract: texts, roles, and what the prompt holds."""
    rows = []
    for record in records:
        prompt_text = "\n".join(m["content"] for m in record["prompt"])
        row = {
            "id": record["id"],
            "question_id": record["question_id"],
            "prompt_text": prompt_text,
            "prompt_roles": ",".join(m["role"] for m in record["prompt"]),
            "answer_text": record[answer_field][0]["content"],
        }
        if "rejected" in record:
            row["rejected_text"] = record["rejected"][0]["content"]
            row["same_text"] = row["answer_text"] == row["rejected_text"]
        rows.append(row)
    schema = {"id": pl.String, "question_id": pl.String, "prompt_text": pl.String, "prompt_roles": pl.String,
              "answer_text": pl.String}
    if answer_field == "chosen":
        schema.update({"rejected_text": pl.String, "same_text": pl.Boolean})
    return pl.DataFrame(rows, schema=schema)
