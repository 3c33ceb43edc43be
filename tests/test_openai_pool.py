"""Several OpenAI-compatible servers behind the openai backend: real servers (tests/openai_server.py,
the tiny model, each in its own process) on 127.0.0.1, one SIGKILLed mid-run. Nothing is lost,
nothing is recorded twice, and no failed request becomes a sample."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import pytest

from corpus.generate.backends import OpenAICompatibleGenerator, SamplingConfig
from corpus.generate.cache import GenerationCache
from corpus.generate.openai_pool import GenerationError
from corpus.generate.prompts import sampling_template
from corpus.generate.sampling import sample_questions
from tests.conftest import REPO
from tests.test_generate_openai import mortality_questions
from tests.tiny_model import build_tiny_model

K = 3
QUESTIONS = mortality_questions(8)
TOTAL = len(QUESTIONS) * K


class Server:
    """tests/openai_server.py in a process of its own; `answered` counts the replies it generated."""

    def __init__(self, model: Path, log: Path):
        self.log = log
        self.errors = log.with_suffix(".stderr")  # a file, not a pipe: nobody reads it while tests run
        with open(self.errors, "w") as errors:
            self.process = subprocess.Popen(
                [sys.executable, str(REPO / "tests" / "openai_server.py"), str(model), "--answered-log", str(log)],
                stdout=subprocess.PIPE, stderr=errors, text=True,
            )

    def wait_ready(self) -> str:
        line = self.process.stdout.readline()  # the server prints this once it accepts connections
        assert line.startswith("listening "), f"server did not start: {line!r}\n{self.errors.read_text()}"
        self.base_url = line.split()[1]
        return self.base_url

    @property
    def answered(self) -> int:
        return len(self.log.read_text().splitlines()) if self.log.exists() else 0

    def kill_after(self, answers: int) -> threading.Thread:
        """SIGKILL the server once it has generated `answers` replies in all (watched from a thread)."""
        def watch() -> None:
            deadline = time.monotonic() + 60
            while self.answered < answers and time.monotonic() < deadline:
                time.sleep(0.002)
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.process.stdout.close()


def _dead_url() -> str:
    """A port on 127.0.0.1 that nothing listens on (bound, then released): connection refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Two servers, started at once (each loads torch for seconds). The first test kills `doomed`;
    the last one, once the reference run is made, kills `steady` (it must stay the file's last)."""
    root = tmp_path_factory.mktemp("pool")
    model = build_tiny_model(root / "model")
    started = {name: Server(model, root / f"{name}.log") for name in ("steady", "doomed")}
    try:
        for server in started.values():
            server.wait_ready()
        yield started
    finally:
        for server in started.values():
            server.stop()


def _generator(base_url, attempts=4, backoff=0.05):
    return OpenAICompatibleGenerator(base_url, "tiny", SamplingConfig(1.0, 0.95, 12), "t0", concurrency=2,
                                     attempts=attempts, backoff=backoff)


def _run(generator, cache_path: Path):
    cache = GenerationCache(cache_path)
    try:
        return sample_questions(QUESTIONS, generator, cache, sampling_template(), k=K, round_=1, round_seed=7)
    finally:
        cache.close()


def _cached(cache_path: Path) -> dict:
    cache = GenerationCache(cache_path)
    try:
        keys = [row[0] for row in cache._db.execute("SELECT key FROM generations ORDER BY key")]
        return cache.get_many(keys)
    finally:
        cache.close()


def _parquet(frame: pl.DataFrame, path: Path) -> bytes:
    frame.write_parquet(path, compression="zstd")  # as the sample stage writes samples.parquet
    return path.read_bytes()


@pytest.fixture(scope="module")
def one_server_run(servers, tmp_path_factory):
    """The reference: every sample through the steady server alone, in a fresh cache."""
    root = tmp_path_factory.mktemp("reference")
    frame, report = _run(_generator(servers["steady"].base_url), root / "cache.sqlite")
    assert report.generated == TOTAL
    return frame, _parquet(frame, root / "samples.parquet"), _cached(root / "cache.sqlite"), root / "cache.sqlite"


def test_a_server_killed_mid_run_loses_nothing_and_changes_nothing(servers, one_server_run, tmp_path):
    reference, reference_bytes, reference_cache, _ = one_server_run
    steady, doomed = servers["steady"], servers["doomed"]
    generator = _generator([doomed.base_url, steady.base_url])
    killer = doomed.kill_after(3)
    frame, report = _run(generator, tmp_path / "cache.sqlite")
    killer.join(timeout=60)

    assert doomed.process.returncode == -signal.SIGKILL
    assert 3 <= doomed.answered < TOTAL  # killed part-way, after answering some
    stats = generator.pool.stats()
    assert stats.failed[doomed.base_url] >= 1 and stats.retried >= 1  # its requests in flight went elsewhere
    assert stats.answered[steady.base_url] >= TOTAL - doomed.answered

    # Every sample once, the same keys and texts as the one-server run, the same file bytes.
    assert report.generated == TOTAL and frame.height == TOTAL and frame["id"].n_unique() == TOTAL
    assert _cached(tmp_path / "cache.sqlite") == reference_cache
    assert frame.equals(reference)
    assert _parquet(frame, tmp_path / "samples.parquet") == reference_bytes


def test_the_server_list_is_not_part_of_the_fingerprint(servers, one_server_run):
    """A cache filled through one server is reused through two, in either order: nothing is sent."""
    reference, _, _, cache_path = one_server_run
    steady = servers["steady"]
    before = steady.answered
    for urls in ([steady.base_url, _dead_url()], [_dead_url(), steady.base_url + "/"]):
        frame, report = _run(_generator(urls), cache_path)
        assert report.cached == TOTAL and report.generated == 0 and frame.equals(reference)
    assert steady.answered == before


def test_all_servers_dead_is_a_clear_error_and_keeps_what_finished(servers, one_server_run, tmp_path):
    _, _, reference_cache, _ = one_server_run
    last, never = servers["steady"], _dead_url()
    killer = last.kill_after(last.answered + 3)
    with pytest.raises(GenerationError) as raised:
        _run(_generator([last.base_url, never], attempts=3), tmp_path / "cache.sqlite")
    killer.join(timeout=60)

    message = str(raised.value)
    failed_key = re.search(r"request ([0-9a-f]{64}):", message).group(1)
    assert "after 3 attempt(s)" in message and last.base_url in message and never in message
    kept = _cached(tmp_path / "cache.sqlite")
    # Finished samples stay cached, exactly as the reference made them; the failed one is not there.
    assert 1 <= len(kept) < TOTAL
    assert all(reference_cache[key] == generation for key, generation in kept.items())
    assert failed_key in reference_cache and failed_key not in kept
