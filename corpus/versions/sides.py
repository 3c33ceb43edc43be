"""One side of a `corpus diff`: where its artifacts are read from.

A side is written as

- `round:N`: the work tree's `data/rounds/N` (with the work tree's questions,
  params.yaml and metrics/details/sample-N.json);
- a path: a round folder (one holding dpo.jsonl / sft.jsonl / samples.parquet /
  regenerated.parquet), a repository root (its `data/rounds/<round>`), or one
  artifact file (`dpo.jsonl`, `samples.parquet`, a questions parquet, ...);
- anything else: a git revision or a DVC experiment name (`HEAD~1`, `v1.2`,
  `exp-1a2b3`). Its files are read through DVC's file system at that commit
  (`dvc.api.DVCFileSystem`: DVC-tracked outs come from the DVC cache or remote,
  git-tracked ones from git), so the work tree is never checked out; its
  params come from `git show <sha>:params.yaml`.

Every reader returns None for an artifact the side does not have: a diff of
two pair files without samples is still a diff, with the hard/easy section
marked absent.
"""

from __future__ import annotations

import io
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import yaml

from corpus.db import quote_path
from corpus.errors import CorpusError

ARTIFACTS = ("dpo", "sft", "questions", "samples", "regenerated")
ROUND_FILES = {"dpo": "dpo.jsonl", "sft": "sft.jsonl", "samples": "samples.parquet",
               "regenerated": "regenerated.parquet"}
SPLITS = ("train", "val", "test")
ROUND_SPEC = re.compile(r"^round:(\d+)$")
# The message-list fields of the pair files and the text each is reduced to: its
# last message (the assistant's reply). Prompts are reduced to a hash (they hold
# whole patient records; a diff needs to know only whether they changed).
JSONL_TEXTS = {"dpo": ("chosen", "rejected"), "sft": ("completion",)}
MESSAGES_SQL = "STRUCT(content VARCHAR, role VARCHAR)[]"


def read_pair_file(path: Path, artifact: str, ids: list[str] | None = None) -> pl.DataFrame:
    """A pair file as id, question_id, prompt_h (+ prompt text when `ids` picks rows) and its texts.

    Read with DuckDB's JSON reader: on a million nested records it is several
    times faster than polars' NDJSON reader (bench/diff_scale.py) and it
    projects the texts out while it parses, so whole message lists never sit
    in memory.
    """
    import duckdb

    fields = JSONL_TEXTS[artifact]
    columns = ", ".join([f"{name}: '{MESSAGES_SQL}'" for name in ("prompt", *fields)])
    texts = ", ".join(f"{name}[-1].content AS {name}, length({name}[-1].content) AS {name}_chars" for name in fields)
    prompt = ", list_filter(prompt, lambda m: m.role = 'user')[-1].content AS prompt" if ids is not None else ""
    where = " WHERE list_contains($ids, id)" if ids is not None else ""
    query = (f"SELECT id, question_id, hash(prompt) AS prompt_h{prompt}, {texts} FROM read_json({quote_path(path)}, "
             f"format='newline_delimited', columns={{id: 'VARCHAR', question_id: 'VARCHAR', {columns}}}){where}")
    con = duckdb.connect(":memory:")
    try:
        con.execute("SET enable_progress_bar = false")  # its bar would go to stdout, into --json
        relation = con.sql(query, params={"ids": ids}) if ids is not None else con.sql(query)
        return pl.from_arrow(relation.to_arrow_table())
    except duckdb.Error as error:
        raise SideError(f"{path}: not {artifact} records as the pairs stage writes them "
                        f"(id, question_id, prompt, {', '.join(fields)}): {error}") from error
    finally:
        con.close()


class SideError(CorpusError):
    """A side could not be resolved or one of its files could not be read."""


@dataclass
class Side:
    """Where one side's files live: `kind` is round, folder, file or rev."""

    spec: str
    kind: str
    # round / folder / file: the repository root (None when the folder is not in
    # one); rev: the repository whose commit `resolved` is read.
    root: Path | None
    # round / folder: the round folder; file: the file; rev: the round folder path inside the repo
    location: str
    resolved: str
    round: str | None
    file_artifact: str | None = None
    _fs: object = field(default=None, repr=False)
    _scratch: object = field(default=None, repr=False)

    # -- reading -----------------------------------------------------------------
    def _rev_fs(self):
        if self._fs is None:
            from dvc.api import DVCFileSystem

            self._fs = DVCFileSystem(repo=str(self.root), rev=self.resolved)
        return self._fs

    def _local(self, relative: str) -> Path | None:
        """A repository-relative file of a local side (None: no repository root or no file)."""
        if self.root is None:
            return None
        path = self.root / relative
        return path if path.is_file() else None

    def rev_has(self, relative: str) -> bool:
        """Whether the commit has the file: a DVC out that dvc.yaml declares but dvc.lock has no hash
        for (a stage never run at that commit) is listed by DVC's file system, yet has no content."""
        fs = self._rev_fs()
        try:
            info = fs.info(relative)
        except FileNotFoundError:
            return False
        if info.get("type") != "file":
            return False
        entry = (info.get("dvc_info") or {}).get("entry")
        return entry is None or entry.hash_info is not None or bool(info.get("md5"))

    def _rev_bytes(self, relative: str) -> bytes | None:
        fs = self._rev_fs()
        try:
            if not self.rev_has(relative):
                return None
            with fs.open(relative, "rb") as handle:
                return handle.read()
        except FileNotFoundError as error:  # dvc.lock names it, but its content is in no cache or remote
            raise SideError(f"side {self.spec!r} ({self.resolved[:12]}): {relative} is recorded at that commit "
                            f"but its content is not in the DVC cache or remote (`dvc fetch --rev "
                            f"{self.resolved[:12]}` or `dvc pull` brings it): {error}") from error
        except Exception as error:  # DVC raises its own types for a missing cache or remote
            raise SideError(f"side {self.spec!r} ({self.resolved[:12]}): cannot read {relative}: {error}") from error

    def artifact_source(self, artifact: str) -> str | None:
        """Where an artifact is read from (for the report), or None when the side lacks it."""
        if self.kind == "file":
            return self.location if artifact == self.file_artifact else None
        if artifact == "questions":
            return "data/questions" if self.kind == "rev" or self.root is not None else None
        return f"{self.location}/{ROUND_FILES[artifact]}"

    def _source(self, relative: str) -> Path | io.BytesIO | None:
        if self.kind == "rev":
            data = self._rev_bytes(relative)
            return None if data is None else io.BytesIO(data)
        return self._local(relative)

    def _round_file(self, artifact: str) -> Path | io.BytesIO | None:
        if self.kind == "file":
            return Path(self.location) if artifact == self.file_artifact else None
        if self.kind == "rev":
            return self._source(f"{self.location}/{ROUND_FILES[artifact]}")
        path = Path(self.location) / ROUND_FILES[artifact]
        return path if path.is_file() else None

    def scan(self, artifact: str) -> pl.LazyFrame | None:
        """The artifact's rows (lazy where the file is local), or None when this side has none."""
        if artifact == "questions":
            return self._questions()
        if artifact in JSONL_TEXTS:
            path = self._pair_path(artifact)
            return None if path is None else read_pair_file(path, artifact).lazy()
        source = self._round_file(artifact)
        if source is None:
            return None
        try:
            return pl.scan_parquet(source) if isinstance(source, Path) else pl.read_parquet(source).lazy()
        except Exception as error:  # polars' errors say what; this says where
            raise SideError(f"side {self.spec!r}: cannot read {artifact} from {self.artifact_source(artifact)}: "
                            f"{error}") from error

    def _pair_path(self, artifact: str) -> Path | None:
        """A pair file DuckDB can read: a local side's own file, a revision's content fetched once into a
        scratch folder (None when the side has none)."""
        if self.kind != "rev":
            return self._round_file(artifact)
        name = ROUND_FILES[artifact]
        if self._scratch is not None and (Path(self._scratch.name) / name).exists():
            return Path(self._scratch.name) / name
        data = self._rev_bytes(f"{self.location}/{name}")
        if data is None:
            return None
        if self._scratch is None:
            import tempfile

            self._scratch = tempfile.TemporaryDirectory(prefix="corpus-diff-")
        path = Path(self._scratch.name) / name
        path.write_bytes(data)
        return path

    def prompts(self, artifact: str, ids: list[str]) -> dict[str, str]:
        """The user message of a few records' prompts (for examples; the diff itself keeps prompt hashes)."""
        if not ids or artifact not in JSONL_TEXTS:
            return {}
        path = self._pair_path(artifact)
        if path is None:
            return {}
        frame = read_pair_file(path, artifact, ids)
        return dict(frame.select("id", "prompt").iter_rows())

    def _questions(self) -> pl.LazyFrame | None:
        if self.kind == "file":
            if self.file_artifact != "questions":
                return None
            return pl.scan_parquet(self.location)
        frames = []
        for split in SPLITS:
            source = self._source(f"data/questions/{split}.parquet")
            if source is not None:
                frame = pl.scan_parquet(source) if isinstance(source, Path) else pl.read_parquet(source).lazy()
                frames.append(frame)
        return pl.concat(frames, how="diagonal_relaxed") if frames else None

    def params(self) -> dict | None:
        """The side's params.yaml, or None (a lone file, a folder outside a repository)."""
        if self.kind == "rev":
            try:
                text = subprocess.run(["git", "show", f"{self.resolved}:params.yaml"], cwd=self.root,
                                      capture_output=True, text=True, check=True).stdout
            except subprocess.CalledProcessError:
                return None
        else:
            path = self._local("params.yaml")
            if path is None:
                return None
            text = path.read_text(encoding="utf-8")
        try:
            return yaml.safe_load(text) or {}
        except yaml.YAMLError as error:
            raise SideError(f"side {self.spec!r}: params.yaml does not parse: {error}") from error

    def sample_details(self) -> dict | None:
        """metrics/details/sample-<round>.json (the generator's fingerprint), or None."""
        if self.round is None:
            return None
        import json

        source = self._source(f"metrics/details/sample-{self.round}.json")
        if source is None:
            return None
        raw = source.read_bytes() if isinstance(source, Path) else source.getvalue()
        try:
            return json.loads(raw)
        except ValueError as error:
            raise SideError(f"side {self.spec!r}: metrics/details/sample-{self.round}.json: {error}") from error

    def describe(self) -> dict:
        return {"spec": self.spec, "kind": self.kind, "resolved": self.resolved, "round": self.round}


# -- resolving ---------------------------------------------------------------------
def _git_root(path: Path) -> Path | None:
    result = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=path, capture_output=True, text=True)
    return Path(result.stdout.strip()) if result.returncode == 0 else None


def _artifact_of_file(path: Path) -> str | None:
    name = path.name
    for artifact, filename in ROUND_FILES.items():
        if name == filename or name.endswith(f"_{filename}") or name.endswith(f"-{filename}"):
            return artifact
    if path.suffix == ".parquet" and (path.stem in SPLITS or "question" in path.stem):
        return "questions"
    if path.suffix == ".jsonl":  # a renamed pair file: DPO records carry `chosen`
        with open(path, encoding="utf-8") as handle:
            first = handle.readline()
        return "dpo" if '"chosen"' in first else "sft"
    return None


def _latest_round(rounds: list[str], exists) -> str | None:
    for key in sorted(rounds, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k), reverse=True):
        if exists(key):
            return key
    return None


def _wanted(artifact: str | None) -> tuple[str, ...]:
    """The round files that make a round the side's default: the diffed artifact's, else any."""
    return (ROUND_FILES[artifact],) if artifact in ROUND_FILES else tuple(ROUND_FILES.values())


def _path_side(spec: str, path: Path, round_: str | None, artifact: str | None) -> Side:
    path = path.resolve()
    if path.is_file():
        artifact = _artifact_of_file(path)
        if artifact is None:
            raise SideError(f"side {spec!r}: {path} is not a known artifact file "
                            f"({', '.join(ROUND_FILES.values())} or a questions parquet)")
        return Side(spec, "file", None, str(path), str(path), None, artifact)
    if any((path / name).is_file() for name in ROUND_FILES.values()):
        # a round folder: data/rounds/<N> inside a repository finds its questions and params there
        root = path.parents[2] if path.parent.name == "rounds" and len(path.parents) > 2 else None
        round_name = path.name if root is not None else round_
        return Side(spec, "folder", root, str(path), str(path), round_name)
    rounds_dir = path / "data" / "rounds"
    if rounds_dir.is_dir():  # a repository (or a copy of one): its latest or --round round
        keys = [p.name for p in rounds_dir.iterdir() if p.is_dir()]
        chosen = round_ or _latest_round(keys, lambda k: any((rounds_dir / k / n).is_file()
                                                            for n in _wanted(artifact)))
        if chosen is None or not (rounds_dir / chosen).is_dir():
            raise SideError(f"side {spec!r}: {rounds_dir} has no round {round_ or '(any)'}")
        return Side(spec, "folder", path, str(rounds_dir / chosen), str(path), chosen)
    raise SideError(f"side {spec!r}: {path} holds none of {', '.join(ROUND_FILES.values())} "
                    f"and no data/rounds/")


def _rev_side(spec: str, repo: Path, round_: str | None, artifact: str | None) -> Side:
    from dvc.scm import RevError, SCMError, resolve_rev
    from scmrepo.git import Git

    root = _git_root(repo)
    if root is None:
        raise SideError(f"side {spec!r}: not round:N, not an existing path, and {repo} is not a git "
                        f"repository to read a revision from")
    try:
        sha = resolve_rev(Git(str(root)), spec)
    except (RevError, SCMError) as error:
        raise SideError(f"side {spec!r}: not round:N, not an existing path, not a git revision or DVC "
                        f"experiment of {root} ({error})") from None
    side = Side(spec, "rev", root, "", sha, None)
    if round_ is None:
        params = side.params() or {}
        keys = [str(k) for k in (params.get("rounds") or {})]
        round_ = _latest_round(keys, lambda k: any(side.rev_has(f"data/rounds/{k}/{n}") for n in _wanted(artifact)))
        if round_ is None:
            raise SideError(f"side {spec!r} ({sha[:12]}): no data/rounds/<N> of params.yaml `rounds` "
                            f"({', '.join(keys) or 'none'}) has {' or '.join(_wanted(artifact))}")
    side.round = str(round_)
    side.location = f"data/rounds/{round_}"
    return side


def resolve_side(spec: str, repo: Path = Path("."), round_: str | None = None, artifact: str | None = None) -> Side:
    """Resolve a side's spec (see the module docstring).

    `round_` picks the round of a rev or repository side; without it, the latest
    round (of params.yaml `rounds`, or the folders) that has `artifact`'s file.
    """
    match = ROUND_SPEC.match(spec)
    if match:
        root = (_git_root(repo) or repo).resolve()
        folder = root / "data" / "rounds" / match.group(1)
        if not folder.is_dir():
            raise SideError(f"side {spec!r}: {folder} does not exist (has round {match.group(1)} run?)")
        return Side(spec, "round", root, str(folder), str(folder), match.group(1))
    path = Path(spec) if Path(spec).is_absolute() else repo / spec
    if path.exists():
        return _path_side(spec, path, round_, artifact)
    return _rev_side(spec, repo, round_, artifact)
