"""Chat completions spread over several OpenAI-compatible servers (one vLLM server per GPU host, say).

Each request goes to the healthy server with the fewest requests in flight.
A request that fails for a reason another server may not share (connection
refused or reset, timeout, HTTP 5xx or 429) is retried on another server after
a short backoff, and the server that failed is put aside for `cooldown`
seconds; after `attempts` tries the request raises `GenerationError` naming
its key and every server tried. An answer the server gives deliberately (any
other 4xx: unknown model, bad request) is a configuration error and is not
retried. Nothing here ever turns a failure into text: a failed request has no
Generation, so it can never be cached as a sample.

Requests carry the per-sample seed, so the server that answers does not
decide the text: the pool's servers must serve the same model (name and
revision are the fingerprint; the URLs are not).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from corpus.errors import ConfigError, CorpusError

log = logging.getLogger(__name__)

# HTTP statuses worth another server: overloaded, rate-limited, or broken there.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class GenerationError(CorpusError):
    """A request no server answered within its attempts."""


def normalise_urls(base_url: str | Sequence[str]) -> tuple[str, ...]:
    """One URL or a list of them -> distinct URLs without trailing slashes, in the order given."""
    urls = [base_url] if isinstance(base_url, str) else list(base_url or [])
    if not urls or not all(isinstance(u, str) and u.strip() for u in urls):
        raise ConfigError(f"params.yaml sample.openai.base_url: expected a URL or a list of URLs, found {base_url!r}")
    seen: dict[str, None] = {}
    for url in urls:
        seen.setdefault(url.strip().rstrip("/"), None)
    return tuple(seen)


@dataclass
class _Server:
    url: str
    in_flight: int = 0
    aside_until: float = 0.0  # time.monotonic() before which it gets no request
    answered: int = 0
    failed: int = 0


@dataclass
class PoolStats:
    answered: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    retried: int = 0


class ServerPool:
    """Thread-safe: many worker threads call `post` at once."""

    def __init__(self, base_url: str | Sequence[str], *, api_key: str = "EMPTY", timeout: float = 600.0,
                 attempts: int = 4, backoff: float = 0.5, cooldown: float = 30.0):
        import requests

        if attempts < 1:
            raise ConfigError(f"params.yaml sample.openai.attempts: expected >= 1, found {attempts}")
        self._requests = requests
        self.servers = [_Server(url) for url in normalise_urls(base_url)]
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff
        self.cooldown = cooldown
        self.retried = 0
        self._lock = threading.Lock()
        self._local = threading.local()  # one requests.Session per thread (Session is not thread-safe)
        self._headers = {"Authorization": f"Bearer {api_key}"}

    def _session(self):
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = self._requests.Session()
            session.headers.update(self._headers)
        return session

    def _pick(self, tried: set[str]) -> _Server:
        """Least busy healthy server not yet tried for this request; else least busy healthy;
        else (all put aside) the one that comes back first: being put aside steers requests
        away from a server, it never stops a request while attempts remain."""
        now = time.monotonic()
        healthy = [s for s in self.servers if s.aside_until <= now]
        fresh = [s for s in healthy if s.url not in tried]
        pool = fresh or healthy
        if pool:
            return min(pool, key=lambda s: (s.in_flight, s.url in tried, self.servers.index(s)))
        return min(self.servers, key=lambda s: s.aside_until)

    def post(self, key: str, path: str, body: dict) -> dict:
        """POST `body` to `path` on some server; the JSON reply, or GenerationError after `attempts`."""
        tried: list[str] = []
        errors: list[str] = []
        for attempt in range(self.attempts):
            if attempt:
                # Backoff before a retry: a server that is restarting or shedding load gets a moment.
                time.sleep(min(self.backoff * 2 ** (attempt - 1), 10.0))
            with self._lock:
                server = self._pick(set(tried))
                server.in_flight += 1
                self.retried += bool(attempt)
            tried.append(server.url)
            url = server.url + path
            try:
                response = self._session().post(url, json=body, timeout=self.timeout)
                # A reply cut off mid-body (the server died while sending) fails here, not later.
                payload = response.json() if response.status_code == 200 else None
            except self._requests.RequestException as error:  # refused, reset, timed out, truncated
                failure = f"{url}: {type(error).__name__}"
            else:
                if payload is not None:
                    with self._lock:
                        server.in_flight -= 1
                        server.answered += 1
                    return payload
                if response.status_code not in RETRY_STATUSES:
                    with self._lock:
                        server.in_flight -= 1
                    raise ConfigError(f"{url}: HTTP {response.status_code}: {response.text[:300]}")
                failure = f"{url}: HTTP {response.status_code}"
            with self._lock:
                server.in_flight -= 1
                server.failed += 1
                server.aside_until = time.monotonic() + self.cooldown
            errors.append(failure)
            log.warning("request %s failed (%s); server put aside for %.0f s", key[:12], failure, self.cooldown)
        raise GenerationError(
            f"request {key}: no answer after {self.attempts} attempt(s); servers tried: {', '.join(tried)}; "
            f"errors: {'; '.join(errors)}"
        )

    def stats(self) -> PoolStats:
        with self._lock:
            return PoolStats({s.url: s.answered for s in self.servers}, {s.url: s.failed for s in self.servers},
                             self.retried)


def chat_body(model: str, messages: Sequence[dict], sampling, seed: int) -> dict:
    """One chat-completions request: n=1 with the sample's own seed, so any server gives the same text."""
    return {
        "model": model,
        "messages": list(messages),
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_new_tokens,
        "seed": seed,
        "n": 1,
    }


def parse_reply(payload: dict):
    from corpus.generate.cache import Generation

    choice = payload["choices"][0]
    tokens = int((payload.get("usage") or {}).get("completion_tokens") or 0)
    finish = "length" if choice.get("finish_reason") == "length" else "eos"
    return Generation(choice["message"]["content"] or "", tokens, finish)


def generate(pool: ServerPool, model: str, sampling, requests, missing, concurrency: int, on_tokens=None):
    """Yield {key: Generation} per finished chunk of the requests in `missing`, `concurrency`
    requests in flight per server. When a request fails for good, the chunk's finished
    requests are yielded first (the caller caches them) and then its error is raised."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    todo = [r for r in requests if r.key in missing]
    workers = max(1, concurrency * len(pool.servers))
    # A few rounds of work per chunk keep every server busy between flushes.
    chunk = workers * 4

    def complete(request):
        payload = pool.post(request.key, "/chat/completions", chat_body(model, request.messages, sampling,
                                                                        request.seed))
        try:
            return parse_reply(payload)
        except (KeyError, IndexError, TypeError, AttributeError):
            # Not an OpenAI chat completion: nothing to cache, and no server should be trusted with a retry.
            raise GenerationError(f"request {request.key}: not a chat completion: {str(payload)[:300]}") from None

    with ThreadPoolExecutor(max_workers=workers) as executor:
        for start in range(0, len(todo), chunk):
            futures = {executor.submit(complete, r): r for r in todo[start : start + chunk]}
            finished, failure = {}, None
            for future in as_completed(futures):
                try:
                    generation = future.result()
                except CorpusError as error:
                    # The first failure is raised; the rest of the chunk still finishes and is kept.
                    failure = failure or error
                    continue
                finished[futures[future].key] = generation
                if on_tokens:
                    on_tokens(generation.new_tokens)
            yield finished
            if failure is not None:
                raise failure
