"""The `openvino` backend with the tiny model: export, prompts and scores as the transformers
backend, reproducible samples, the sample stage killed and resumed, `sample.backend: auto`."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from corpus.errors import ConfigError
from corpus.generate.auto_backend import resolve_backend
from corpus.generate.backends import SampleRequest, SamplingConfig, TransformersGenerator, model_identity
from corpus.generate.openvino_backend import OpenVINOGenerator, checked_export, ir_folder
from corpus.hashing import file_sha256
from corpus.models.openvino_export import export_openvino, read_export
from tests.conftest import requires_demo
from tests.tiny_model import build_tiny_model

QUESTIONS = ["Will the patient die in hospital?", "How long will the current hospital stay last? Choose one option.",
             "Heart rate below 72.0 bpm, lactate rising, blood pressure falling despite fluids."]


@pytest.fixture(scope="module")
def tiny_ir(tmp_path_factory):
    """The tiny model and its IR where the export stage puts it (<model>-ov)."""
    model = build_tiny_model(tmp_path_factory.mktemp("ov"))
    record = export_openvino(model, ir_folder(model))
    return model, ir_folder(model), record


def _requests(n: int, seed0: int = 100) -> list[SampleRequest]:
    return [SampleRequest(f"r{i}", ({"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]},), seed0 + i)
            for i in range(n)]


def _run(generator, requests, missing=None) -> dict:
    out = {}
    for batch in generator.generate(requests, missing or {r.key for r in requests}):
        out.update(batch)
    return out


def test_export_record_names_its_source_and_versions(tiny_ir):
    model, ir, record = tiny_ir
    assert read_export(ir) == record
    assert record["source_identity"] == model_identity(model) and record["weight_format"] == "fp32"
    assert set(record["versions"]) >= {"openvino", "openvino-genai", "openvino-tokenizers", "torch", "transformers"}
    assert {p.name for p in ir.iterdir()} >= {"openvino_model.xml", "openvino_model.bin", "openvino_tokenizer.xml",
                                              "openvino_detokenizer.xml", "export.json", "tokenizer.json"}
    assert not [p for p in ir.parent.iterdir() if p.name.endswith(".tmp")]  # atomic: no staging left
    # A folder exported from another model, or in another format, is refused by name.
    with pytest.raises(ConfigError, match=r"int8"):
        checked_export(model, ir, "int8")
    with pytest.raises(ConfigError, match="not an OpenVINO export folder"):
        read_export(model)


def test_prompts_greedy_answers_and_scores_match_the_transformers_backend(tiny_ir):
    model, ir, _ = tiny_ir
    greedy = SamplingConfig(temperature=0.0, top_p=1.0, max_new_tokens=16)
    ov_gen = OpenVINOGenerator(model, greedy, "t", ir_dir=ir, threads=1)
    hf_gen = TransformersGenerator(model, greedy, "t", dtype="float32", threads=1)
    requests = _requests(3)
    for request in requests:  # the chat template applied the same way
        assert ov_gen._prompt_ids(request.messages) == hf_gen._prompt_ids(request.messages)
    assert _run(ov_gen, requests) == _run(hf_gen, requests)
    # The parser's fallback: option scores from the IR's logits equal the torch model's.
    options = ["Yes", "No", "A. less than 3 days (0 to 2 days)"]
    ov_scores = ov_gen.option_logprobs(requests[1].messages, options)
    hf_scores = hf_gen.option_logprobs(requests[1].messages, options)
    assert all(math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-3) for a, b in zip(ov_scores, hf_scores)), (ov_scores,
                                                                                                     hf_scores)
    fp = ov_gen.fingerprint
    assert fp["backend"] == "openvino" and fp["model"] == model_identity(model)
    assert fp["inference_precision"] == "f32" and fp["kv_cache_precision"] == "f32" and fp["threads"] == 1
    assert fp["ir"]["weight_format"] == "fp32" and fp["scheduler"]["prefix_caching"] is True


def test_a_sample_is_the_same_alone_in_a_batch_and_in_a_new_pipeline(tiny_ir):
    model, ir, _ = tiny_ir
    sampling = SamplingConfig(temperature=1.0, top_p=0.95, max_new_tokens=24)
    generator = OpenVINOGenerator(model, sampling, "t", ir_dir=ir, threads=2)
    requests = _requests(8)
    together = _run(generator, requests)
    assert len({g.text for g in together.values()}) > 4  # the seeds do differ
    alone = {}
    for request in reversed(requests):
        alone.update(_run(generator, [request]))
    assert alone == together
    # Another pipeline, one thread, half the requests: the same texts (f32: no batch or thread effect).
    other = OpenVINOGenerator(model, sampling, "t", ir_dir=ir, threads=1)
    assert _run(other, requests[::2]) == {r.key: together[r.key] for r in requests[::2]}


def test_auto_reads_its_table_and_rejects_a_bad_one(tmp_path):
    table = tmp_path / "defaults.yaml"
    table.write_text(yaml.safe_dump({"families": {"avx512_bf16": "openvino", "avx2": "transformers",
                                                  "other": "transformers"}}))
    assert resolve_backend("auto", "avx512_bf16", table) == ("openvino", "avx512_bf16")
    assert resolve_backend("auto", "avx2", table) == ("transformers", "avx2")
    assert resolve_backend("vllm", "avx2", table) == ("vllm", "avx2")  # a named backend passes through
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"families": {"avx2": "llama"}}))
    with pytest.raises(ConfigError, match=r"bad\.yaml.*missing \['avx512_bf16', 'other'\].*llama"):
        resolve_backend("auto", "avx2", bad)


@requires_demo
def test_stage_killed_and_resumed_reuses_the_cache_and_gives_the_same_bytes(tmp_path, tiny_ir,
                                                                                   demo_cohorts):
    from corpus.config import CohortConfig
    from corpus.questions.mimic import MIMIC_TASKS, build_mimic_questions
    from corpus.questions.question_sets import publish_question_sets
    from corpus.questions.sampling import SamplingPolicy
    from tests.test_sample_stage import QUESTIONS as N, K, _kill_once_cached, _run_in_process, _stats, _workdir

    model, _, _ = tiny_ir
    policies = {t: SamplingPolicy() for t in MIMIC_TASKS}
    publish_question_sets(build_mimic_questions(demo_cohorts["kare"], policies, CohortConfig(), 13), policies,
                          (0.8, 0.1, 0.1), 13, tmp_path / "questions")
    settings = {"backend": "openvino", "max_new_tokens": 96, "openvino": {"cache_size_gb": 1, "threads": 1}}
    # Only the killed run is a child process (tests/test_sample_stage.py says why).
    whole = _workdir(tmp_path / "whole", model, tmp_path / "questions", **settings)
    _run_in_process(whole)
    total = N * K
    assert _stats(whole)["generation"]["generated"] == total
    assert _stats(whole)["generator"]["backend"] == "openvino"

    killed = _workdir(tmp_path / "killed", model, tmp_path / "questions", **settings)
    done = _kill_once_cached(killed)
    assert 0 < done < total, "the kill should land part-way"
    _run_in_process(killed)
    # The re-run takes what the killed run flushed from the content cache, and draws only the rest.
    assert _stats(killed)["generation"] == {**_stats(killed)["generation"], "cached": done, "generated": total - done}
    samples = Path("data/rounds/1/samples.parquet")
    assert file_sha256(killed / samples) == file_sha256(whole / samples)


def test_export_stage_writes_the_ir_or_says_why_not(tmp_path, tiny_ir, monkeypatch):
    import sys

    from tests.conftest import REPO

    monkeypatch.syspath_prepend(str(REPO / "stages"))
    sys.modules.pop("export_openvino", None)
    from export_openvino import run_export

    model, ir, _ = tiny_ir
    before = {p.name: file_sha256(p) for p in ir.iterdir()}
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["rounds"] = {"1": {"generator": str(model)}}
    path = tmp_path / "params.yaml"
    # openvino: the IR again, byte for byte (so the DVC out, and the sample stage, stay put).
    params["sample"]["backend"] = "openvino"
    path.write_text(yaml.safe_dump(params))
    assert run_export(1, path)["source_identity"] == model_identity(model)
    assert {p.name: file_sha256(p) for p in ir.iterdir()} == before
    # Another backend: only the reason, and the backend refuses the folder saying so.
    params["sample"]["backend"] = "transformers"
    path.write_text(yaml.safe_dump(params))
    assert run_export(1, path)["exported"] is False
    assert [p.name for p in ir.iterdir()] == ["export.json"]
    with pytest.raises(ConfigError, match="resolves to transformers"):
        checked_export(model, ir, "fp32")
    export_openvino(model, ir)  # the module's IR back, for any test after this one
