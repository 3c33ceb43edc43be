"""The OpenAI-compatible backend against a real HTTP server on 127.0.0.1 serving the tiny model,
and the content-addressed cache around it: nothing is generated twice."""

from __future__ import annotations

import pytest

from corpus.generate.backends import OpenAICompatibleGenerator, SampleRequest, SamplingConfig
from corpus.generate.cache import Generation, GenerationCache
from corpus.generate.prompts import sampling_template
from corpus.generate.sampling import sample_questions
from tests.openai_server import ModelServer
from tests.tiny_model import build_tiny_model

def mortality_questions(n: int) -> list[dict]:
    """n small mortality questions with distinct records (and so distinct prompts)."""
    return [
        {
            "id": f"{i:016x}",
            "task": "mortality",
            "context": f"Visit 0:\nConditions:\n1. Sepsis\n2. Acute kidney failure\nMedications:\n1. Heparin {i}",
            "question": "Will the patient die in hospital during their next admission? Answer Yes or No.",
            "options": ["Yes", "No"],
            "answer": "No" if i % 2 else "Yes",
        }
        for i in range(n)
    ]


QUESTIONS = mortality_questions(3)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = build_tiny_model(tmp_path_factory.mktemp("tiny"))
    with ModelServer(folder, served_name="tiny") as running:
        yield running


def _generator(server, max_new_tokens=12):
    return OpenAICompatibleGenerator(server.base_url, "tiny", SamplingConfig(0.9, 0.95, max_new_tokens), "t0",
                                     concurrency=2)


def test_requests_go_to_the_server_and_come_back_seeded(server):
    generator = _generator(server)
    messages = ({"role": "user", "content": "Is the patient stable? Answer Yes or No."},)
    requests = [SampleRequest("a", messages, 1), SampleRequest("b", messages, 2), SampleRequest("c", messages, 1)]
    before = server.requests
    batches = list(generator.generate(requests, {"a", "b", "c"}))
    got = {k: g for batch in batches for k, g in batch.items()}
    assert server.requests - before == 3
    assert got["a"] == got["c"]  # same seed, same prompt: same text
    assert all(0 < g.new_tokens <= 12 for g in got.values())
    assert generator.fingerprint["backend"] == "openai" and generator.fingerprint["model"] == "tiny"


def test_unknown_model_is_a_clear_error(server):
    from corpus.errors import ConfigError

    generator = OpenAICompatibleGenerator(server.base_url, "no-such-model", SamplingConfig(), "t0")
    with pytest.raises(ConfigError, match="404"):
        list(generator.generate([SampleRequest("a", ({"role": "user", "content": "hi"},), 1)], {"a"}))


def test_sampling_is_cached_by_content(server, tmp_path):
    cache = GenerationCache(tmp_path / "cache.sqlite")
    template = sampling_template()
    first, report = sample_questions(QUESTIONS, _generator(server), cache, template, k=2, round_=1, round_seed=7)
    assert report.generated == 6 and report.cached == 0 and first.height == 6
    assert first["id"].to_list() == sorted(first["id"].to_list())
    assert set(first["parse_status"]) <= {"boxed", "statement", "invalid", "conflict", "unparsed"}
    assert (first["correct"] == (first["predicted"] == first["question_id"].replace_strict(
        {q["id"]: q["answer"] for q in QUESTIONS}))).all()

    before = server.requests
    again, report = sample_questions(QUESTIONS, _generator(server), cache, template, k=2, round_=1, round_seed=7)
    assert server.requests == before and report.generated == 0 and report.cached == 6
    assert again.equals(first)

    # One more sample per question: only the new k index goes to the server.
    more, report = sample_questions(QUESTIONS, _generator(server), cache, template, k=3, round_=1, round_seed=7)
    assert report.generated == 3 and server.requests - before == 3
    assert more.filter(more["k_index"] < 2).sort("id").equals(first)

    # Another sampling parameter is another generator: nothing reused.
    _, report = sample_questions(QUESTIONS, _generator(server, max_new_tokens=8), cache, template, k=1, round_=1,
                                 round_seed=7)
    assert report.cached == 0 and report.generated == 3


def test_cache_survives_reopen_and_merges(tmp_path):
    one = GenerationCache(tmp_path / "one.sqlite")
    one.put_many({"k1": Generation("a", 1, "eos"), "k2": Generation("b", 2, "length")})
    one.put_scores("k1", [-1.0, -2.0])
    one.close()
    two = GenerationCache(tmp_path / "two.sqlite")
    two.put_many({"k2": Generation("b", 2, "length"), "k3": Generation("c", 3, "eos")})
    assert two.merge_from(tmp_path / "one.sqlite") == 1  # k2 is a duplicate (same content): skipped
    got = two.get_many(["k1", "k2", "k3"])
    assert got["k1"] == Generation("a", 1, "eos")
    assert got["k2"] == Generation("b", 2, "length")
    assert two.get_scores("k1") == [-1.0, -2.0]
    # (A key two files answer differently is an error: tests/test_shards.py.)
