"""The native decode-attention kernels (corpus/generate/kernels/decode_attention.cpp),
built here with g++ for this CPU: exact against float64 attention, independent of
the thread count, and the engine sampling through them end to end."""

from __future__ import annotations

import pytest
import torch

from corpus.generate import native
from corpus.generate.hf_sampler import (
    PromptJob,
    SamplingParams,
    _DecodeCache,
    _KVLevel,
    decode_attention_path,
    load_model,
    sample_batch,
)
from tests.test_hf_sampler import chat, check_level_rows, reference_attention
from tests.conftest import cpu_flags, cpu_summary

HEAD_DIM = 64  # SmolLM2's head size; the kernels also take 128


# What kernels/decode_attention.cpp's #error asks of the CPU (it is built -march=native).
KERNEL_FLAGS = ("avx512f", "avx512bw", "avx512_bf16")


@pytest.fixture(scope="module")
def kernels():
    missing = [flag for flag in KERNEL_FLAGS if flag not in cpu_flags()]
    if missing:
        pytest.skip(f"the native kernels need {', '.join(KERNEL_FLAGS)}; this CPU lacks {', '.join(missing)} "
                    f"[{cpu_summary()}]")
    built = native.decode_attention()
    if built is None:
        status = native.kernel_status()
        if status == f"{native.ENV_SWITCH}=0" or status.startswith("no C++ compiler"):
            pytest.skip(f"native decode attention switched off or unbuildable here: {status}")
        # The CPU has what the source asks for: a failed build is a bug, not a skip.
        pytest.fail(f"native kernels did not build on a CPU with {', '.join(KERNEL_FLAGS)}: {status}")
    return built


def random_kv(generator, lengths, kv_heads, head_dim=HEAD_DIM):
    return [[torch.randn(kv_heads, length, head_dim, generator=generator).bfloat16()] for length in lengths]


def check_rows(out, lse, q, scale, rows, row_paths, keys, values):
    # fp32 scores: far tighter than the torch path's bf16 scores (3e-2, 2**-8).
    check_level_rows(out, lse, q, scale, rows, row_paths, keys, values, atol=4e-3, lse_rtol=1e-5)


@pytest.mark.parametrize("head_dim", [64, 128])
def test_level_kernel_is_exact_over_several_segments_per_row_and_after_keep(kernels, head_dim):
    generator = torch.Generator().manual_seed(2)
    # Lengths off the chunk grid and off the 16-key blocks; one segment shorter than a block.
    lengths, kv_heads, groups = [40, 3000, 2000, 900, 7], 3, 3
    keys = random_kv(generator, lengths, kv_heads, head_dim)
    values = random_kv(generator, lengths, kv_heads, head_dim)
    # Segment 2 busy (more query vectors than the kernel's block of 6), rows over two
    # segments, one row over none.
    row_paths = [[0], [2], [2], [2], [2], [2], [2], [2], [2], [], [1, 2], [3], [0, 3], [4], [1, 4]]
    segment_rows = [[row for row, path in enumerate(row_paths) if segment in path] for segment in range(len(lengths))]
    level = _KVLevel(keys, values, segment_rows, len(row_paths), kernels)
    q = torch.randn(len(row_paths), kv_heads, groups, head_dim, generator=generator).bfloat16()
    check_rows(*level.attend(0, q, 0.125), q, 0.125, range(len(row_paths)), row_paths, keys, values)
    kept = [0, 9, 11, 12, 13, 14]
    level.keep(kept)
    out, lse = level.attend(0, q[kept], 0.125)
    check_rows(out, lse, q, 0.125, kept, row_paths, keys, values)
    # The check is sharp enough to see a key left out (row 13's 7-key segment, less its last).
    truncated = reference_attention(q[13, 0] * 0.125, keys[4][0][0, :-1], values[4][0][0, :-1],
                                    torch.ones(groups, 6, dtype=torch.bool))[0]
    assert (out[4, 0].double() - truncated).abs().max() > 1e-2


def test_level_kernel_takes_more_rows_per_chunk_than_one_piece(kernels):
    """Rows past the kernel's piece of 1,024 query vectors per chunk (400 rows x 3 groups)."""
    generator = torch.Generator().manual_seed(7)
    keys, values = random_kv(generator, [100], 1), random_kv(generator, [100], 1)
    rows = 400
    level = _KVLevel(keys, values, [list(range(rows))], rows, kernels)
    q = torch.randn(rows, 1, 3, HEAD_DIM, generator=generator).bfloat16()
    out, lse = level.attend(0, q, 0.125)
    checked = [0, 1, 340, 341, 342, 399]
    check_rows(out[checked], lse[checked], q, 0.125, checked, [[0]] * rows, keys, values)


@pytest.mark.parametrize("head_dim", [64, 128])
def test_decode_cache_kernels_attend_to_prompt_segments_and_own_tokens_past_one_chunk(kernels, head_dim):
    """Whole decode attention (levels, then each row's own tokens merged in, as bf16)
    against float64 over each row's prompt and generated keys, with more generated
    tokens than one 512-key piece."""
    generator = torch.Generator().manual_seed(3)
    kv_heads, groups, steps = 2, 4, 530
    shared = 700
    lengths = [shared + 50, shared + 40, 30]
    keys = random_kv(generator, lengths, kv_heads, head_dim)
    values = random_kv(generator, lengths, kv_heads, head_dim)
    for job in (1,):  # job 1 shares job 0's first `shared` tokens: their KV must be equal
        keys[job][0][:, :shared], values[job][0][:, :shared] = keys[0][0][:, :shared], values[0][0][:, :shared]
    prompts = [[1] * shared + [2] * 50, [1] * shared + [3] * 40, [4] * 30]
    row_jobs = [0, 0, 1, 2]
    cache = _DecodeCache(prompts, keys, values, row_jobs, steps, kernels=kernels)
    assert cache.kernels is kernels and all(level._kernels is kernels for level in cache.levels)
    own_keys = torch.randn(len(row_jobs), kv_heads, steps, head_dim, generator=generator).bfloat16()
    own_values = torch.randn(len(row_jobs), kv_heads, steps, head_dim, generator=generator).bfloat16()
    for step in range(steps):
        key, value = own_keys[:, :, step : step + 1], own_values[:, :, step : step + 1]
        packed_keys, packed_values = cache.layers[0].update(key, value)
        if step not in (0, 15, 16, 511, 512, steps - 1):
            continue
        query = torch.randn(len(row_jobs), kv_heads * groups, 1, head_dim, generator=generator).bfloat16()
        out = cache.attend(0, query, packed_keys, packed_values, 0.125)
        assert out.dtype == torch.bfloat16 and out.shape == (len(row_jobs), 1, kv_heads * groups, head_dim)
        for row, job in enumerate(row_jobs):
            all_keys = torch.cat([keys[job][0], own_keys[row, :, : step + 1]], dim=1)
            all_values = torch.cat([values[job][0], own_values[row, :, : step + 1]], dim=1)
            q = query[row, :, 0].view(kv_heads, groups, head_dim)
            for head in range(kv_heads):
                expected, _ = reference_attention(q[head] * 0.125, all_keys[head], all_values[head],
                                                  torch.ones(groups, all_keys.shape[1], dtype=torch.bool))
                # bf16 output: half a unit in its last place, plus the fp32 work.
                torch.testing.assert_close(out[row, 0, head * groups : (head + 1) * groups].double(), expected,
                                           atol=2e-3, rtol=2**-8)


def test_kernels_give_the_same_bits_whatever_the_thread_count(kernels):
    generator = torch.Generator().manual_seed(4)
    lengths = [1500, 600, 90]
    keys, values = random_kv(generator, lengths, 3), random_kv(generator, lengths, 3)
    segment_rows = [[0, 1, 2, 3], [1, 2], [3, 4, 5]]
    level = _KVLevel(keys, values, segment_rows, 6, kernels)
    q = torch.randn(6, 3, 3, HEAD_DIM, generator=generator).bfloat16()
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            results.append(level.attend(0, q, 0.125))
    finally:
        torch.set_num_threads(threads)
    for out, lse in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(lse, results[0][1])


@pytest.fixture(scope="module")
def wide_folder(wide_tiny_model):
    """The tiny test model with SmolLM2's head size (64): 2 query heads on 1 KV head."""
    return wide_tiny_model


@pytest.fixture(scope="module")
def wide_heads(wide_folder):
    return load_model(wide_folder, dtype="bfloat16", threads=1)


def test_the_fingerprint_names_the_decode_attention_that_runs(kernels, wide_folder, monkeypatch):
    from corpus.generate import hf_sampler
    from corpus.generate.backends import SamplingConfig, TransformersGenerator

    native_path = TransformersGenerator(wide_folder, SamplingConfig(), "template", dtype="bfloat16", threads=1)
    assert native_path.fingerprint["decode_attention"] == "native"
    # fp32 never runs the kernels (they read bf16).
    fp32 = TransformersGenerator(wide_folder, SamplingConfig(), "template", dtype="float32", threads=1)
    assert fp32.fingerprint["decode_attention"] == "torch"
    # Where the kernels cannot run, the torch path samples: a different generator.
    monkeypatch.setattr(hf_sampler, "_decode_kernels", lambda like: None)
    torch_path = TransformersGenerator(wide_folder, SamplingConfig(), "template", dtype="bfloat16", threads=1)
    assert torch_path.fingerprint["decode_attention"] == "torch"
    assert torch_path.fingerprint != native_path.fingerprint


def test_the_engine_samples_through_the_kernels_as_through_torch(kernels, wide_heads, monkeypatch):
    from corpus.generate import hf_sampler

    model, tokenizer = wide_heads
    assert decode_attention_path(model) == "native"
    record = "Admission 1: sepsis, lactate 4.1, norepinephrine. Admission 2: pneumonia, discharged home. "
    prompts = [chat(tokenizer, record * 6 + question) for question in ("Mortality?", "Readmission?", "Stay?")]
    jobs = [PromptJob(prompt, [11 + i, 50 + i]) for i, prompt in enumerate(prompts)]
    greedy = SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=40)
    through_kernels = sample_batch(model, tokenizer, jobs, greedy)
    assert through_kernels == sample_batch(model, tokenizer, jobs, greedy)  # reproducible
    monkeypatch.setattr(hf_sampler, "_decode_kernels", lambda like: None)
    assert decode_attention_path(model) == "torch"
    through_torch = sample_batch(model, tokenizer, jobs, greedy)
    tokens = [[s.token_ids for s in samples] for samples in through_kernels]
    assert all(len(t) == 40 for samples in tokens for t in samples)  # no early stop hides a difference
    # Both paths round in bf16, at different places: the greedy paths agree until a
    # near-tie flips; most tokens agree.
    agree = sum(a == b for kernel_samples, torch_samples in zip(tokens, through_torch)
                for kernel_tokens, torch_sample in zip(kernel_samples, torch_samples)
                for a, b in zip(kernel_tokens, torch_sample.token_ids))
    assert agree >= 0.8 * sum(len(t) for samples in tokens for t in samples)


def test_without_a_working_compiler_the_engine_keeps_the_torch_path(tmp_path, monkeypatch):
    """A compiler that rejects the source (as g++ does on a CPU without AVX512-BF16,
    via the source's #error) leaves no library behind and gives a reason naming it."""
    fake = tmp_path / "fake-g++"
    fake.write_text("#!/bin/sh\n"
                    "if [ \"$1\" = --version ]; then echo 'fake 1.0'; exit 0; fi\n"
                    "echo 'decode_attention.cpp:27:2: error: #error \"needs AVX512F, AVX512BW and AVX512-BF16\"' >&2\n"
                    "exit 1\n")
    fake.chmod(0o755)
    monkeypatch.delenv(native.ENV_SWITCH, raising=False)  # the suite may run with the kernels switched off
    monkeypatch.setenv("CXX", str(fake))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    kernels, reason = native._load.__wrapped__()
    assert kernels is None and "needs AVX512F" in reason and str(fake) in reason
    assert not any((tmp_path / "cache").rglob("*.so*"))  # no half-built library kept
    monkeypatch.setenv(native.ENV_SWITCH, "0")
    assert native._load.__wrapped__() == (None, f"{native.ENV_SWITCH}=0")


def test_prefill_attention_with_the_native_causal_softmax_is_exact(kernels, monkeypatch):
    """The blocked prefill attention (query blocks over the prefix and their own keys)
    with the kernel's softmax, which masks each row's future itself."""
    from corpus.generate import hf_sampler

    monkeypatch.setattr(hf_sampler, "_BLOCK_ROWS", 48)  # several blocks, a ragged last one
    generator = torch.Generator().manual_seed(6)
    prefix, new, heads, kv_heads = 37, 130, 6, 2
    query = torch.randn(1, heads, new, HEAD_DIM, generator=generator).bfloat16()
    key = torch.randn(1, kv_heads, prefix + new, HEAD_DIM, generator=generator).bfloat16()
    value = torch.randn(1, kv_heads, prefix + new, HEAD_DIM, generator=generator).bfloat16()
    assert hf_sampler._decode_kernels(key[0]) is kernels
    out = hf_sampler._blocked_causal_attention(query, key, value, prefix, 0.125)
    groups = heads // kv_heads
    position = prefix + torch.arange(new).unsqueeze(1)
    for shift, close in ((0, True), (1, False)):  # the exact mask, then one future key leaking in
        visible = torch.arange(prefix + new).unsqueeze(0) <= position + shift
        expected, _ = reference_attention(query[0] * 0.125, key[0].repeat_interleave(groups, 0),
                                          value[0].repeat_interleave(groups, 0), visible)
        error = (out[0].transpose(0, 1).double() - expected).abs().max()
        assert (error < 2e-2) if close else (error > 0.1)
    # Through torch's softmax the same call gives the same attention, up to bf16 rounding.
    monkeypatch.setattr(hf_sampler, "_decode_kernels", lambda like: None)
    through_torch = hf_sampler._blocked_causal_attention(query, key, value, prefix, 0.125)
    torch.testing.assert_close(out.float(), through_torch.float(), atol=2e-2, rtol=0)
