"""`corpus publish`: a Hub-ready dataset folder of one version, checked, then (optionally) uploaded.

Order, so nothing leaves the machine unless every check passed:
1. refuse early when a source may not go public (credentialed MIMIC-IV, an
   unknown registry) and the repository is not --private (card.py says why);
2. build the folder atomically: README.md (card with YAML configs) and one
   parquet per config and split: questions train/validation/test, sft and dpo
   `train` (one round) or `round_<r>` (several);
3. load every config back with `datasets.load_dataset(folder, config)` and
   compare configs, splits, row counts and columns with what was written;
4. scan the folder for the Hub token's value (it must never be in a file);
5. plan the Hub operations (create_repo, visibility and tag checks,
   upload_folder as one commit, create_tag); --dry-run prints them, --push runs them.

The token is whatever huggingface_hub finds (HF_TOKEN or the stored login); this
module only asks whether there is one and never prints, logs or writes it.
"""

from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from corpus.atomic import atomic_dir
from corpus.errors import ConfigError, CorpusError
from corpus.versions import card
from corpus.versions.layout import (Layout, artifact_records, git_revision, lock_entries, lock_params, matches_lock,
                                    round_artifact_paths)
from corpus.versions.lineage import PAIR_SCHEMAS, lineage_summary, lineage_table, read_pairs

log = logging.getLogger(__name__)

VERSION = re.compile(r"^v\d+\.\d+(\.\d+)?$")
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
QUESTION_SPLITS = {"train": "train", "val": "validation", "test": "test"}
PARQUET = "{config}/{split}-00000-of-00001.parquet"


class PublishRefused(CorpusError):
    """The version may not go where it was asked to go."""


@dataclass(frozen=True)
class PublishRequest:
    repo_id: str
    version: str
    rounds: str | list[int] | None = "latest"
    out: Path | None = None
    private: bool = False
    revision: str = "main"
    root: Path = Path(".")

    def __post_init__(self) -> None:
        if not REPO_ID.match(self.repo_id):
            raise ConfigError(f"--repo-id: expected ORG/NAME (letters, digits, - _ .), found {self.repo_id!r}")
        if not VERSION.match(self.version):
            raise ConfigError(f"--version: expected vMAJOR.MINOR (e.g. v1.0 or v1.2.3), found {self.version!r}")

    @property
    def folder(self) -> Path:
        return self.out or self.root / ".cache" / "publish" / f"{self.repo_id.split('/')[1]}-{self.version}"


@dataclass
class BuiltFolder:
    folder: Path
    rounds: list[int]
    counts: dict[str, dict[str, int]]  # config -> split -> rows
    columns: dict[str, list[str]]
    sources: list[card.SourceDataset]
    files: list[tuple[str, int]] = field(default_factory=list)  # (path in repo, bytes), sorted

    @property
    def credentialed(self) -> bool:
        return any(s.public_refusal for s in self.sources)


def check_destination(sources: list[card.SourceDataset], private: bool, repo_id: str) -> None:
    """Refuse a non-private destination for data that may not be public, naming the reason."""
    blocked = [s for s in sources if s.public_refusal]
    if blocked and not private:
        reasons = "; ".join(f"{s.name}: {s.public_refusal}" for s in blocked)
        raise PublishRefused(f"refusing to publish to {repo_id} without --private: this version {reasons}. "
                             "Re-run with --private (and keep the repository private), or build from open data.")


def _tasks(layout: Layout) -> set[str]:
    return set(pl.concat([pl.read_parquet(p, columns=["task"]) for p in layout.questions.glob("*.parquet")])["task"].unique())


def plan_sources(layout: Layout) -> list[card.SourceDataset]:
    return card.source_datasets(layout.params(), _tasks(layout), lock_entries(layout))


def _write(frame: pl.DataFrame, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(target, compression="zstd", statistics=True)


def _pair_split(round_: int, rounds: list[int]) -> str:
    return "train" if len(rounds) == 1 else f"round_{round_}"


def _generators(layout: Layout, rounds: list[int]) -> list[dict]:
    import json

    entries = lock_entries(layout)
    rows = []
    for round_ in rounds:
        details = layout.root / "metrics" / "details" / f"sample-{round_}.json"
        settings = json.loads(details.read_text(encoding="utf-8")).get("generator", {}) if details.is_file() else {}
        described = ", ".join(f"{k} {settings[k]}" for k in ("backend", "dtype", "model", "engine") if k in settings)
        if matches_lock(layout, layout.rel(details), entries) is False:
            described = f"{layout.rel(details)} differs from dvc.lock: settings not shown"
        for source in ("samples", "regenerated"):
            path = layout.round_dir(round_) / f"{source}.parquet"
            if path.is_file():
                for generator, n in pl.read_parquet(path, columns=["generator"]).group_by("generator").len().sort("generator").iter_rows():
                    rows.append({"round": round_, "source": source, "generator": generator, "samples": n,
                                 "settings": described if source == "samples" else "hinted prompts"})
    return rows


def _artifacts(layout: Layout, rounds: list[int], sources: list[card.SourceDataset]) -> list[dict]:
    paths = [Path(s.path).as_posix() for s in sources]
    paths += ["data/warehouse/mimic", "data/cohorts", "data/warehouse/registry.parquet", "data/questions"]
    return artifact_records(layout, paths + round_artifact_paths(rounds), present_only=True)


def _params_by_stage(layout: Layout, rounds: list[int]) -> dict[str, dict]:
    """Params of each contained stage as dvc.lock recorded them; params.yaml's sections when there is no lock."""
    outs = {"ingest": "data/warehouse/mimic", "cohorts": "data/cohorts", "registry": "data/warehouse/registry.parquet",
            "questions": "data/questions"}
    for round_ in rounds:
        outs.update({f"sample@{round_}": f"data/rounds/{round_}/samples.parquet",
                     f"regenerate@{round_}": f"data/rounds/{round_}/regenerated.parquet",
                     f"pairs@{round_}": f"data/rounds/{round_}/sft.jsonl"})
    by_out = lock_params(layout)
    recorded = {stage: by_out.get(out, {}) for stage, out in outs.items()}
    if any(recorded.values()):
        return {stage: values for stage, values in recorded.items() if values}
    params = layout.params()
    keys = ("mimic", "cohorts", "registry", "questions", "masked_value", "rounds", "sample", "regenerate", "pairs")
    return {"params.yaml": {k: params[k] for k in keys if k in params}}


def build_folder(request: PublishRequest) -> BuiltFolder:
    """Write the folder (atomically: a failed build leaves the previous one) and return what it holds."""
    layout = Layout(request.root)
    sources = plan_sources(layout)
    check_destination(sources, request.private, request.repo_id)
    rounds = layout.pick_rounds(request.rounds)
    counts: dict[str, dict[str, int]] = {"questions": {}, "sft": {}, "dpo": {}}
    columns: dict[str, list[str]] = {}
    files: dict[tuple[str, str], str] = {}
    labelled: list[pl.DataFrame] = []  # task and label_convention of every question, for the card
    with atomic_dir(request.folder) as tmp:
        for name, split in QUESTION_SPLITS.items():
            source = layout.questions / f"{name}.parquet"
            if not source.is_file():
                raise CorpusError(f"{source}: question split not found (run the questions stage)")
            frame = pl.read_parquet(source)
            files[("questions", split)] = PARQUET.format(config="questions", split=split)
            _write(frame, tmp / files[("questions", split)])
            counts["questions"][split], columns["questions"] = frame.height, frame.columns
            labelled.append(frame.select("task", "label_convention"))
        for kind in ("sft", "dpo"):
            for round_ in rounds:
                split = _pair_split(round_, rounds)
                frame = read_pairs(layout.round_dir(round_) / f"{kind}.jsonl", kind)
                files[(kind, split)] = PARQUET.format(config=kind, split=split)
                _write(frame, tmp / files[(kind, split)])
                counts[kind][split], columns[kind] = frame.height, list(PAIR_SCHEMAS[kind])
        configs = [{"config_name": c, "data_files": [{"split": s, "path": files[(c, s)]} for s in splits]}
                   for c, splits in counts.items()]
        questions = pl.concat(labelled)
        text = card.render_card(
            repo_id=request.repo_id, version=request.version, sources=sources, configs=configs, counts=counts,
            pretty_name=f"{request.repo_id.split('/')[1]} {request.version}", files=files, rounds=rounds,
            git=git_revision(layout.root), params_by_stage=_params_by_stage(layout, rounds),
            generators=_generators(layout, rounds), artifacts=_artifacts(layout, rounds, sources),
            lineage=lineage_summary(lineage_table(layout, rounds)),
            label_conventions=sorted(questions["label_convention"].unique().to_list()), tasks=set(questions["task"]),
        )
        (tmp / "README.md").write_text(text, encoding="utf-8")
    listing = sorted((p.relative_to(request.folder).as_posix(), p.stat().st_size)
                     for p in request.folder.rglob("*") if p.is_file())
    return BuiltFolder(request.folder, rounds, counts, columns, sources, listing)


def verify_folder(built: BuiltFolder) -> dict[str, dict[str, int]]:
    """Load every config with `datasets` from the folder; raise naming the config, split and what differs."""
    import datasets

    datasets.disable_progress_bars()
    loaded: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory(prefix="corpus-publish-check-") as cache:
        found = datasets.get_dataset_config_names(str(built.folder))
        if sorted(found) != sorted(built.counts):
            raise CorpusError(f"{built.folder}/README.md: datasets sees configs {sorted(found)}, expected {sorted(built.counts)}")
        for config, splits in built.counts.items():
            dataset = datasets.load_dataset(str(built.folder), config, cache_dir=cache)
            loaded[config] = {split: dataset[split].num_rows for split in dataset}
            if loaded[config] != splits:
                raise CorpusError(f"{built.folder}: config {config} loads as {loaded[config]} (split: rows), "
                                  f"expected {splits}")
            for split in dataset:
                if dataset[split].column_names != built.columns[config]:
                    raise CorpusError(f"{built.folder}: {config}/{split} has columns {dataset[split].column_names}, "
                                      f"expected {built.columns[config]}")
    return loaded


def hub_token() -> str | None:
    """The token huggingface_hub would send (HF_TOKEN or the stored login). Never print it."""
    from huggingface_hub import get_token

    return get_token()


def assert_no_token(folder: Path) -> None:
    """The token's value must be in no file of the folder (a card must never carry a credential)."""
    token = hub_token()
    if not token:
        return
    needle = token.encode("utf-8")
    for path in sorted(folder.rglob("*")):
        if path.is_file() and needle in path.read_bytes():
            raise PublishRefused(f"{path}: contains the Hugging Face token's value; nothing uploaded, delete the folder")


def upload_plan(request: PublishRequest, built: BuiltFolder) -> dict:
    """The Hub operations --push runs, in order, with the files and sizes upload_folder sends."""
    message = f"{request.version}: questions, sft, dpo (round{'s' if len(built.rounds) > 1 else ''} " \
              f"{', '.join(map(str, built.rounds))})"
    operations = [
        {"call": "create_repo", "repo_id": request.repo_id, "repo_type": "dataset", "private": request.private,
         "exist_ok": True},
        {"call": "repo_info", "repo_id": request.repo_id, "repo_type": "dataset", "check": "private" if built.credentialed else "visibility reported",
         "why": "create_repo(exist_ok=True) keeps an existing repository's visibility"},
        {"call": "list_repo_refs", "repo_id": request.repo_id, "repo_type": "dataset", "check": f"tag {request.version} is free (versions are never moved)"},
    ]
    if request.revision != "main":
        operations.append({"call": "create_branch", "repo_id": request.repo_id, "repo_type": "dataset", "branch": request.revision, "exist_ok": True})
    operations += [
        {"call": "upload_folder", "repo_id": request.repo_id, "repo_type": "dataset", "folder_path": str(built.folder), "revision": request.revision,
         "commit_message": message, "files": len(built.files), "bytes": sum(size for _, size in built.files)},
        {"call": "create_tag", "repo_id": request.repo_id, "repo_type": "dataset", "tag": request.version, "revision": "<commit of upload_folder>",
         "tag_message": f"{request.repo_id} {request.version}"},
    ]
    return {"repo_id": request.repo_id, "repo_type": "dataset", "private": request.private,
            "url": f"https://huggingface.co/datasets/{request.repo_id}", "revision": request.revision,
            "tag": request.version, "folder": str(built.folder), "commit_message": message,
            "token": "found (value not shown)" if hub_token() else "not found: --push needs HF_TOKEN or `hf auth login`",
            "files": [{"path": p, "bytes": n} for p, n in built.files], "operations": operations}


def push(request: PublishRequest, built: BuiltFolder, plan: dict) -> dict:
    """Run the plan against the Hub: one commit, then the version tag on that commit."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    if not hub_token():
        raise PublishRefused(f"--push: no Hugging Face token (set HF_TOKEN or run `hf auth login`); nothing uploaded")
    api = HfApi()
    repo = request.repo_id
    try:
        api.create_repo(repo, repo_type="dataset", private=request.private, exist_ok=True)
        private = bool(api.repo_info(repo, repo_type="dataset").private)
        if built.credentialed and not private:
            raise PublishRefused(f"{repo} exists and is public; this version may only go to a private repository "
                                 f"({next(s.public_refusal for s in built.sources if s.public_refusal)}); nothing uploaded")
        tags = {ref.name for ref in api.list_repo_refs(repo, repo_type="dataset").tags}
        if request.version in tags:
            raise PublishRefused(f"{repo}: tag {request.version} already exists; a version is never moved, "
                                 "publish a new version; nothing uploaded")
        if request.revision != "main":
            api.create_branch(repo, branch=request.revision, repo_type="dataset", exist_ok=True)
        commit = api.upload_folder(repo_id=repo, folder_path=str(built.folder), repo_type="dataset",
                                   revision=request.revision, commit_message=plan["commit_message"])
        api.create_tag(repo, tag=request.version, revision=commit.oid, repo_type="dataset",
                       tag_message=f"{repo} {request.version}")
    except HfHubHTTPError as exc:
        # the message names the URL and the Hub's reason, never the request headers
        raise CorpusError(f"Hub request for {repo} failed: {exc}") from None
    except OSError as exc:
        raise CorpusError(f"Hub request for {repo} failed ({type(exc).__name__}): {exc}") from None
    return {"repo_id": repo, "private": private, "commit": commit.oid, "commit_url": commit.commit_url,
            "tag": request.version}


def render_plan(plan: dict, dry_run: bool) -> str:
    """The plan as text: what would be uploaded where, each Hub call in order."""
    lines = [("dry run: nothing uploaded" if dry_run else "uploading"),
             f"repo      {plan['repo_id']} (dataset, {'private' if plan['private'] else 'public'})  {plan['url']}",
             f"revision  {plan['revision']}", f"tag       {plan['tag']}", f"folder    {plan['folder']}",
             f"token     {plan['token']}", "files:"]
    lines += [f"  {f['bytes']:>12,}  {f['path']}" for f in plan["files"]]
    lines.append(f"  {sum(f['bytes'] for f in plan['files']):>12,}  total, {len(plan['files'])} file(s)")
    lines.append("operations:")
    for number, op in enumerate(plan["operations"], 1):
        args = ", ".join(f"{k}={v!r}" for k, v in op.items() if k != "call")
        lines.append(f"  {number}. {op['call']}({args})")
    return "\n".join(lines)
