"""The `corpus` command: run pipeline stages by hand and inspect their artifacts.

`dvc repro` runs the same stages from dvc.yaml; these commands are for a
single stage, a quick look, or a run outside DVC.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from corpus.errors import CorpusError
from corpus.logs import console, setup_logging

app = typer.Typer(
    name="corpus",
    help="Versioned dataset builder for clinical-reasoning corpora (ReMedi / iReMedi, C-Reason).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ParamsOption = typer.Option(Path("params.yaml"), "--params", help="Parameters file (DVC params.yaml).")


def _run(step):
    setup_logging()
    try:
        return step()
    except CorpusError as exc:
        logging.getLogger("corpus").error("%s", exc)
        raise typer.Exit(1) from None


@app.command()
def ingest(params: Path = ParamsOption) -> None:
    """Read the MIMIC-IV source into typed, checked parquet (stage `ingest`)."""
    from corpus.stages import INGEST_REPORT, run_ingest

    report = _run(lambda: run_ingest(params))
    console.print(f"wrote data/warehouse/mimic/ and {INGEST_REPORT}: {report['rows_excluded_total']} row(s) excluded, "
                  f"{report['invalid_values_total']} invalid value(s) kept as null")


@app.command()
def synth(
    patients: int = typer.Option(..., "--patients", help="How many synthetic patients to write."),
    seed: int = typer.Option(0, "--seed", help="Random seed: same seed and --patients, same bytes."),
    out: Path = typer.Option(..., "--out", help="Folder to write hosp/, icu/ and synth.json to (replaced whole); "
                                                "usable as params.yaml mimic.source."),
    fmt: str = typer.Option("parquet", "--format", help="parquet (fast) or csv.gz (as MIMIC ships; slower)."),
    like: Path = typer.Option(Path("../shared/data/mimic-iv-demo"), "--like",
                              help="MIMIC-IV-shaped source the rates and frequencies are fitted to."),
    table_spec: Path = typer.Option(Path("schemas/mimic_tables.yaml"), "--table-spec",
                                    help="Table spec: which tables and columns are written, with what types."),
    scale_to: str = typer.Option(None, "--scale-to", metavar="NAME|FILE",
                                 help="After fitting to --like, rescale the tables' sizes to a published target: a "
                                      "name in corpus/templates/synth_targets/ (mimic-iv-2.2: the real MIMIC-IV v2.2's "
                                      "row counts, scaled by --patients / 299,712) or your own YAML file of row "
                                      "counts; none (the default) keeps --like's shape. The model: "
                                      "corpus/synth/targets.py."),
) -> None:
    """Write MIMIC-IV-shaped synthetic tables fitted to --like (the model: corpus/synth/__init__.py)."""
    from corpus.config import DuckDBConfig
    from corpus.synth import synthesize

    summary = _run(lambda: synthesize(patients, seed, out, fmt, like, table_spec, DuckDBConfig(),
                                      scale_to=scale_to))
    console.print(f"wrote {out}: " + ", ".join(f"{name} {rows:,}" for name, rows in summary["rows"].items()))


@app.command()
def cohorts(params: Path = ParamsOption) -> None:
    """Build one row per prediction sample and label, per task (stage `cohorts`)."""
    from corpus.stages import run_cohorts

    summary = _run(lambda: run_cohorts(params))
    console.print_json(json.dumps(summary))


@app.command()
def registry(params: Path = ParamsOption) -> None:
    """Build the registry table, one row per stay or patient, checked against its spec (stage `registry`)."""
    from corpus.stages import run_registry

    summary = _run(lambda: run_registry(params))
    console.print_json(json.dumps(summary))


@app.command()
def questions(params: Path = ParamsOption) -> None:
    """Turn cohorts and registry rows into validated, patient-split question sets (stage `questions`)."""
    from corpus.stages import run_questions

    summary = _run(lambda: run_questions(params))
    console.print_json(json.dumps(summary["by_task_split"]))


@app.command()
def stats(
    folder: Path = typer.Argument(Path("data/questions"), help="Folder of question parquet files."),
    plot: Path = typer.Option(Path("plots/questions.png"), help="Where to write the bar chart (PNG)."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON instead of tables."),
) -> None:
    """Print counts per task, split and answer and context-length percentiles; write a bar chart."""
    from rich.table import Table

    from corpus.stats import plot_question_counts, question_stats, read_question_sets

    frame = _run(lambda: read_question_sets(folder))
    figures = question_stats(frame)
    plot_question_counts(frame, plot)
    if as_json:
        typer.echo(json.dumps(figures, indent=2, sort_keys=True))
        return
    splits = ("train", "val", "test")
    table = Table(title=f"{figures['questions']} questions, {figures['patients']} patients ({folder})")
    table.add_column("task")
    for split in splits:
        table.add_column(split, justify="right")
    table.add_column("answers")
    for task, by_split in figures["by_task_split"].items():
        answers = ", ".join(f"{a}: {n}" for a, n in figures["by_task_answer"][task].items())
        table.add_row(task, *(str(by_split.get(s, 0)) for s in splits), answers)
    console.print(table)
    lengths = Table(title="context length (characters)")
    lengths.add_column("task")
    for name in next(iter(figures["context_chars"].values()), {}):
        lengths.add_column(name, justify="right")
    for task, values in figures["context_chars"].items():
        lengths.add_row(task, *(f"{v:.0f}" for v in values.values()))
    console.print(lengths)
    console.print(f"bar chart: {plot}")


@app.command()
def baseline(params: Path = ParamsOption) -> None:
    """Fit and score the scikit-learn reference per task on the question splits (stage `baseline`)."""
    from corpus.baseline.stage import DETAILS, METRICS, PREDICTIONS, run_baseline

    metrics = _run(lambda: run_baseline(params))
    console.print_json(json.dumps(metrics))
    console.print(f"wrote {METRICS}, {DETAILS} and {PREDICTIONS}")


@app.command("base-model")
def base_model(params: Path = ParamsOption) -> None:
    """Prepare the generator / trainable base model as a local Hugging Face folder (stage `base_model`)."""
    from corpus.stages import run_base_model

    console.print_json(json.dumps(_run(lambda: run_base_model(params))))


@app.command()
def sample(
    round_: int = typer.Option(1, "--round", help="Round whose generator samples (params.yaml rounds)."),
    shard: int = typer.Option(None, help="This host's shard (0-based); overrides sample.shard."),
    num_shards: int = typer.Option(None, help="How many hosts share the questions; overrides sample.num_shards."),
    cache: Path = typer.Option(None, help="Generation cache file; overrides sample.cache (one per host or "
                                          "array task: SQLite must not be shared over NFS)."),
    params: Path = ParamsOption,
) -> None:
    """Sample k rationale + answer texts per train question, cached by content (stage `sample@<round>`).

    With --shard i --num-shards n, writes data/rounds/<r>/samples.shard-i-of-n.parquet (the questions
    whose id falls in shard i of the unsharded run's questions). Afterwards: `corpus cache merge
    host*.sqlite`, then `corpus sample --round r` (or `dvc repro`) on the merged cache generates
    nothing and writes the one samples.parquet."""
    from corpus.stages import run_sample

    stats = _run(lambda: run_sample(round_, params, shard=shard, num_shards=num_shards, cache=cache))
    console.print_json(json.dumps({k: stats[k] for k in ("samples", "accuracy", "by_task", "parse_status", "generation")}))


@app.command()
def train(
    round_: int = typer.Option(1, "--round", help="Round whose pair files are trained on (data/rounds/<round>/)."),
    params: Path = ParamsOption,
) -> None:
    """TRL SFT from the base model, then DPO (or GRPO) from the SFT model (stage `train@<round>`).

    Writes models/round-<round>/sft/ and models/round-<round>/<train.method>/ and
    metrics/train-<round>.json. Several GPUs: `accelerate launch --multi_gpu
    --num_processes 8 stages/train.py --round 1` with train.profile gpu.
    """
    from corpus.train.stage import run_train

    summary = _run(lambda: run_train(round_, params))
    console.print_json(json.dumps({k: v for k, v in summary.items() if k != "profile"}))


@app.command()
def evaluate(
    round_: int = typer.Option(None, "--round", help="Round whose SFT and preference models answer (omit: the base model)."),
    params: Path = ParamsOption,
) -> None:
    """Answer the test split greedily and score it per task (stages `evaluate_base`, `evaluate@<round>`)."""
    from corpus.evaluate import run_evaluate, run_evaluate_base

    results = _run((lambda: run_evaluate_base(params)) if round_ is None else (lambda: run_evaluate(round_, params)))
    console.print_json(json.dumps({model: result["headline"] for model, result in results.items()}))


@app.command()
def leaks(
    input: Path = typer.Option(..., "--input", help="JSON lines with `rationale`, `hint`, an optional `answer` (gold option text) and `id`."),
    output: Path = typer.Option(None, "--output", help="Where to write the verdicts (default: standard output)."),
    rules: Path = typer.Option(None, "--rules", help="Leak rules file (default: corpus/templates/leak_rules.yaml)."),
    explain: bool = typer.Option(False, "--explain", help="Per verdict: the rule, the matched span and why the rule exists."),
) -> None:
    """Check rationales for hint leaks: one JSON line per row with id, leak and the rule that fired."""
    import json
    import sys
    import tempfile

    from corpus.leaks import check_jsonl, explain_line

    if output is None:
        with tempfile.TemporaryDirectory() as scratch:
            target = Path(scratch) / "verdicts.jsonl"
            _run(lambda: check_jsonl(input, target, rules, explain=explain))
            text = target.read_text(encoding="utf-8")
            if explain:
                text = "".join(explain_line(json.loads(line)) + "\n" for line in text.splitlines())
            sys.stdout.write(text)
        return
    summary = _run(lambda: check_jsonl(input, output, rules, explain=explain))
    if explain:
        for line in output.read_text(encoding="utf-8").splitlines():
            console.print(explain_line(json.loads(line)), markup=False, highlight=False)
    console.print(f"{output}: {summary['rows']} row(s), {summary['leaks']} leak(s) {summary['by_rule']}")


@app.command()
def diff(
    old: str = typer.Argument(..., help="OLD side: a git revision or DVC experiment (HEAD~1, v1.2, an exp name), round:N, or a folder/file."),
    new: str = typer.Argument(..., help="NEW side, the same forms."),
    artifact: str = typer.Option("dpo", "--artifact", help="Which records to key: dpo | sft | questions | samples | regenerated."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON (schemas/diff_report.schema.json, schema_version 1)."),
    markdown: bool = typer.Option(False, "--markdown", help="Print the report as Markdown (a pull request comment)."),
    fail_on: list[str] = typer.Option(None, "--fail-on", help="Exit 1 when METRIC OP VALUE holds, e.g. removed>0.2 (fraction of OLD), added>100 (count), leak_drop_rate>0.1. Repeatable; names in corpus/versions/gates.py."),
    examples: int = typer.Option(3, "--examples", help="Example rows per kind (added, removed, each change kind), with a word diff."),
    round_: str = typer.Option(None, "--round", help="Round of a revision or repository side (default: its latest round with files)."),
    repo: Path = typer.Option(Path("."), "--repo", help="Repository that revisions and round:N are read from."),
    max_ids: int = typer.Option(1000, "--max-ids", help="At most this many ids per kind in --json."),
) -> None:
    """Row-level diff of preference data (or questions, samples) between two versions.

    Records are keyed by id and question id: unchanged (same id), changed
    (DPO: chosen, rejected, both or only the prompt; SFT: completion or prompt),
    added, removed; then per-task and per-label counts, text length percentiles,
    questions that moved between hard and easy, leak-filter reasons,
    regeneration yield, params that differ and generator fingerprints. Revisions
    are read through DVC's cache, never by checking out the work tree. Exit
    code: 0, 1 when a --fail-on threshold trips, 2 when a side or an expression
    is wrong.
    """
    from corpus.versions.compare import run

    if artifact not in ("dpo", "sft", "questions", "samples", "regenerated"):
        raise typer.BadParameter(f"--artifact {artifact!r}: expected dpo, sft, questions, samples or regenerated")
    raise typer.Exit(run(old, new, artifact, as_json, markdown, fail_on, examples, round_, repo, max_ids))


@app.command()
def lineage(
    record_id: str = typer.Argument(..., help="An SFT or DPO record id, or a question id."),
    round_: int = typer.Option(None, "--round", help="Look only in this round (default: every round with pair files)."),
    root: Path = typer.Option(Path("."), "--root", help="The version's folder (a checkout or a copy of its data)."),
    as_json: bool = typer.Option(False, "--json", help="Print the chain as JSON."),
) -> None:
    """Trace one record back: sample rows (generator, seed, k index, hinted, leak verdict) -> question ->
    cohort or registry row -> ingest report and source-file md5s, with the dvc.lock hash of each artifact."""
    from corpus.versions.layout import Layout
    from corpus.versions.lineage import trace
    from corpus.versions.lineage_view import render_chain

    layout = Layout(root)
    chain = _run(lambda: trace(layout, record_id, layout.pick_rounds([round_]) if round_ is not None else None))
    if as_json:
        typer.echo(json.dumps(chain, indent=2, sort_keys=True, default=str))
    else:
        from rich.console import Console

        Console(highlight=False).print(render_chain(chain))


@app.command()
def publish(
    repo_id: str = typer.Option(..., "--repo-id", help="Hub dataset repository, ORG/NAME."),
    version: str = typer.Option(..., "--version", help="Version tag, vMAJOR.MINOR (e.g. v1.0)."),
    rounds: str = typer.Option("latest", "--rounds", help="Rounds whose pair files go in: latest, all, or e.g. 1,2."),
    out: Path = typer.Option(None, "--out", help="Folder to build (default: .cache/publish/<name>-<version>)."),
    private: bool = typer.Option(False, "--private", help="Create the repository private (required for credentialed sources)."),
    revision: str = typer.Option("main", "--revision", help="Branch the commit goes to."),
    push: bool = typer.Option(False, "--push", help="Upload: create_repo, upload_folder (one commit), create_tag."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Build and check the folder, print what --push would upload; upload nothing."),
    root: Path = typer.Option(Path("."), "--root", help="The version's folder (a checkout or a copy of its data)."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan (and the push result) as JSON."),
) -> None:
    """Build a Hub-ready dataset folder (card with licences and lineage; parquet for configs questions, sft,
    dpo), check it with datasets.load_dataset, then --dry-run prints the upload plan or --push uploads it.

    Credentialed data (params.yaml mimic.open_data: false) is refused for any repository that is not --private.
    The Hub token comes from HF_TOKEN or the stored login and is never printed or written."""
    from corpus.versions import publish as publishing

    request = _run(lambda: publishing.PublishRequest(repo_id=repo_id, version=version, rounds=rounds, out=out,
                                                     private=private, revision=revision, root=root))
    built = _run(lambda: publishing.build_folder(request))
    loaded = _run(lambda: publishing.verify_folder(built))
    _run(lambda: publishing.assert_no_token(built.folder))
    plan = publishing.upload_plan(request, built)
    console.print(f"{built.folder}: checked with datasets.load_dataset: {loaded}")
    uploading = push and not dry_run
    typer.echo(json.dumps(plan, indent=2) if as_json else publishing.render_plan(plan, dry_run=not uploading))
    if not uploading:
        if not dry_run:
            console.print("folder built; nothing uploaded (add --push to upload, --dry-run to only print the plan)")
        return
    result = _run(lambda: publishing.push(request, built, plan))
    typer.echo(json.dumps(result, indent=2) if as_json else f"pushed {result['repo_id']} commit {result['commit']} tag {result['tag']}")


cache_app = typer.Typer(help="Inspect and join content-addressed generation caches.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


@cache_app.command("merge")
def cache_merge(
    sources: list[Path] = typer.Argument(..., help="Cache files of other hosts or shards."),
    into: Path = typer.Option(Path(".cache/generations.sqlite"), help="Cache file to merge into."),
) -> None:
    """Copy every generation the target cache lacks from SOURCES (after a sharded run), in one
    transaction: a key two files answer differently stops the merge (naming the key and both
    files) and leaves the target as it was; the same key with the same answer is skipped."""
    from corpus.generate.cache import GenerationCache

    def merge() -> int:
        for source in sources:
            if not source.is_file():
                from corpus.errors import SourceError

                raise SourceError(f"{source}: cache file not found")
        target = GenerationCache(into)
        try:
            return target.merge_from(*sources)
        finally:
            target.close()

    added = _run(merge)
    console.print(f"{into}: {added} generation(s) added")


@cache_app.command("stats")
def cache_stats(path: Path = typer.Argument(Path(".cache/generations.sqlite"), help="Cache file.")) -> None:
    """How many generations a cache holds."""
    from corpus.generate.cache import GenerationCache

    cache = GenerationCache(path)
    console.print(f"{path}: {cache.count()} generation(s)")
    cache.close()


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # python -m corpus.cli
    main()
