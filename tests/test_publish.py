"""`corpus publish` on a planted version: the folder loads with datasets, the plan, refusals, the token never shows."""

from __future__ import annotations

import hashlib
import json

import pytest
import yaml
from typer.testing import CliRunner

from corpus.cli import app
from tests.test_lineage import build_version

TOKEN = "hf_secret_test_value_123"


@pytest.fixture()
def hub_env(tmp_path, monkeypatch):
    """A token in the environment, and no stored login of this machine in the way."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    return TOKEN


def _publish(root, out, *extra):
    args = ["publish", "--root", str(root), "--repo-id", "remedi/demo-corpus", "--version", "v1.0", "--out", str(out), *extra]
    return CliRunner().invoke(app, args)


def _every_byte(folder) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def test_folder_loads_with_its_configs_splits_and_counts(tmp_path, hub_env):
    import datasets

    root = tmp_path / "version"
    root.mkdir()
    build_version(root)
    out = tmp_path / "out"
    result = _publish(root, out, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert sorted(datasets.get_dataset_config_names(str(out))) == ["dpo", "questions", "sft"]
    rows = {config: {split: ds.num_rows for split, ds in datasets.load_dataset(str(out), config,
                                                                           cache_dir=str(tmp_path / "c")).items()}
            for config in ("questions", "sft", "dpo")}
    assert rows == {"questions": {"train": 2, "validation": 1, "test": 1}, "sft": {"train": 3}, "dpo": {"train": 1}}
    sft = datasets.load_dataset(str(out), "sft", split="train", cache_dir=str(tmp_path / "c"))
    assert sft.column_names == ["id", "question_id", "prompt", "completion"]
    assert sft[0]["completion"][0]["role"] == "assistant"
    card = (out / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["license"] == ["cc-by-4.0", "odbl"] and meta["size_categories"] == ["n<1K"]
    assert {c["config_name"] for c in meta["configs"]} == {"questions", "sft", "dpo"}
    assert "text-generation" in meta["task_categories"] and "medical" in meta["tags"] and meta["pretty_name"]
    # lineage section: dvc.lock hashes, generators, the untraced planted record
    assert "q" * 32 + ".dir" in card and "a1a1a1a1a1a1a1a1" in card and "`" + "0" * 16 + "`" in card
    # the plan lists exactly the folder's files with their sizes, and the three Hub calls
    on_disk = {p.relative_to(out).as_posix(): p.stat().st_size for p in out.rglob("*") if p.is_file()}
    assert {f["path"]: f["bytes"] for f in plan["files"]} == on_disk
    calls = [op["call"] for op in plan["operations"]]
    assert calls[0] == "create_repo" and calls[-2:] == ["upload_folder", "create_tag"]
    assert plan["operations"][0]["private"] is False and plan["tag"] == "v1.0" and plan["revision"] == "main"
    # the token is used from the environment, never shown or written
    assert TOKEN not in result.output and TOKEN.encode() not in _every_byte(out)
    assert plan["token"] == "found (value not shown)"


def test_dry_run_prints_the_plan_and_same_inputs_give_same_bytes(tmp_path, hub_env):
    root = tmp_path / "version"
    root.mkdir()
    build_version(root, rounds=(1, 2))
    first = _publish(root, tmp_path / "a", "--dry-run", "--rounds", "all")
    assert first.exit_code == 0, first.output
    text = first.stdout
    assert text.startswith("dry run: nothing uploaded")
    for expected in ("remedi/demo-corpus (dataset, public)", "tag       v1.0", "create_repo(", "upload_folder(",
                     "create_tag(", "sft/round_2-00000-of-00001.parquet", "README.md"):
        assert expected in text, expected
    assert TOKEN not in first.output
    second = _publish(root, tmp_path / "b", "--dry-run", "--rounds", "all")
    digest = lambda folder: {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}
    assert digest(tmp_path / "a") == digest(tmp_path / "b") and second.exit_code == 0


def test_credentialed_source_is_refused_for_a_public_repo(tmp_path, hub_env):
    root = tmp_path / "version"
    root.mkdir()
    build_version(root, open_data=False)
    for extra in (["--dry-run"], ["--push"]):
        result = _publish(root, tmp_path / "out", *extra)
        assert result.exit_code == 1
        assert "PhysioNet" in result.output and "credentialed" in result.output and "--private" in result.output
        assert not (tmp_path / "out").exists()
    private = _publish(root, tmp_path / "out", "--private", "--dry-run", "--json")
    assert private.exit_code == 0, private.output
    meta = yaml.safe_load((tmp_path / "out" / "README.md").read_text().split("---")[1])
    assert meta["license"] == "other" and "Credentialed" in meta["license_name"]
    assert json.loads(private.stdout)["operations"][0]["private"] is True


def test_push_goes_through_huggingface_hub_and_never_shows_the_token(tmp_path, hub_env):
    """No network here: huggingface_hub's offline mode stops the first call; the error names the repo, not the token."""
    root = tmp_path / "version"
    root.mkdir()
    build_version(root)
    result = _publish(root, tmp_path / "out", "--push")
    assert result.exit_code == 1
    assert "remedi/demo-corpus" in result.output and "offline" in result.output.lower()
    assert TOKEN not in result.output and TOKEN.encode() not in _every_byte(tmp_path / "out")


def test_bad_version_repo_and_round_are_named(tmp_path, hub_env):
    root = tmp_path / "version"
    root.mkdir()
    build_version(root)
    assert "--version" in CliRunner().invoke(app, ["publish", "--root", str(root), "--repo-id", "a/b",
                                                  "--version", "1.0"]).output
    assert "--repo-id" in CliRunner().invoke(app, ["publish", "--root", str(root), "--repo-id", "nope",
                                                  "--version", "v1.0"]).output
    missing = _publish(root, tmp_path / "out", "--rounds", "3")
    assert missing.exit_code == 1 and "round(s) [3]" in missing.output


class _FakeHub:
    """The few Hub endpoints create_repo, repo_info, list_repo_refs, upload_folder and create_tag call, on localhost.

    Every file is answered as a regular (not LFS) upload, so the commit carries the bytes inline and the
    test sees exactly what huggingface_hub sent, and with which Authorization header.
    """

    def __init__(self, private: bool = True):
        import http.server
        import threading

        self.requests: list[tuple[str, str, dict, bytes]] = []
        self.private = private
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def _answer(self, body: dict):
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                hub.requests.append(("GET", self.path, dict(self.headers), b""))
                if self.path.split("?")[0].endswith("/refs"):
                    return self._answer({"branches": [], "converts": [], "tags": [], "pullRequests": []})
                return self._answer({"id": "remedi/demo-corpus", "private": hub.private, "sha": "0" * 40})

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hub.requests.append(("POST", self.path, dict(self.headers), body))
                if self.path.startswith("/api/repos/create"):
                    return self._answer({"url": f"{hub.url}/datasets/remedi/demo-corpus", "name": "remedi/demo-corpus"})
                if "/preupload/" in self.path:
                    files = json.loads(body)["files"]
                    return self._answer({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                   for f in files]})
                if "/commit/" in self.path:
                    return self._answer({"commitUrl": f"{hub.url}/datasets/remedi/demo-corpus/commit/{'c' * 40}",
                                         "commitOid": "c" * 40, "pullRequestUrl": None})
                return self._answer({})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_push_to_a_local_hub_sends_one_commit_and_the_tag(tmp_path, hub_env, monkeypatch):
    import base64

    from huggingface_hub import constants

    hub = _FakeHub()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    try:
        root = tmp_path / "version"
        root.mkdir()
        build_version(root)
        result = _publish(root, tmp_path / "out", "--push", "--private", "--json")
    finally:
        hub.close()
    assert result.exit_code == 0, result.output
    calls = [(method, path.split("?")[0]) for method, path, _, _ in hub.requests]
    # in this order (huggingface_hub adds calls of its own, e.g. /api/validate-yaml of the card)
    wanted = [("POST", "/api/repos/create"), ("GET", "/api/datasets/remedi/demo-corpus"),
              ("GET", "/api/datasets/remedi/demo-corpus/refs"), ("POST", "/api/datasets/remedi/demo-corpus/commit/main"),
              ("POST", "/api/datasets/remedi/demo-corpus/tag/" + "c" * 40)]
    assert [c for c in calls if c in wanted] == wanted
    commits = [body for method, path, _, body in hub.requests if "/commit/main" in path]
    assert len(commits) == 1
    lines = [json.loads(line) for line in commits[0].decode().splitlines()]
    sent = {line["value"]["path"]: base64.b64decode(line["value"]["content"]) for line in lines if line["key"] == "file"}
    out = tmp_path / "out"
    assert sent == {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # the token went to the Hub in the header, and nowhere else
    auth = [{k.lower(): v for k, v in headers.items()}.get("authorization") for _, path, headers, _ in hub.requests
            if path.split("?")[0] in {p for _, p in wanted}]
    assert auth == [f"Bearer {TOKEN}"] * len(wanted)
    assert TOKEN not in result.output and all(TOKEN.encode() not in body for _, _, _, body in hub.requests)
    assert json.loads(result.stdout.split("\n}\n", 1)[1])["commit"] == "c" * 40


def test_credentialed_data_never_goes_into_an_existing_public_repo(tmp_path, hub_env, monkeypatch):
    """create_repo(exist_ok=True) keeps an existing repository's visibility: --private alone is not enough."""
    from huggingface_hub import constants

    hub = _FakeHub(private=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    try:
        root = tmp_path / "version"
        root.mkdir()
        build_version(root, open_data=False)
        result = _publish(root, tmp_path / "out", "--push", "--private")
    finally:
        hub.close()
    assert result.exit_code == 1 and "exists and is public" in result.output
    assert not [path for _, path, _, _ in hub.requests if "/commit/" in path or "/tag/" in path]
