"""A transformers-based CPU sampler that draws k samples per prompt fast.

What makes it fast, compared with a loop of ``model.generate(...,
num_return_sequences=k)``:

* **Each prompt is prefilled once for its k samples.** ``generate`` copies the
  prompt k times and prefills every copy. Here the prompt's keys/values are
  computed once and *shared* by its k sample rows during decoding: they are
  never copied k times (a patient context of 4,000 tokens held 4 times is
  ~740 MB of fp32 KV for SmolLM2), and a decode step reads them once per
  prompt, not once per sample.
* **Batches are planned by prompt** (``plan_batches``): jobs sorted by their
  prompt tokens and packed under a token budget and a row cap, so prompts that
  share a prefix (the three task questions about one record; a patient's
  admissions, whose histories extend one another) land in one batch, and one
  decode step advances up to ``max_rows`` samples of many prompts at once.
* **Shared prefixes are prefilled once** (``prefill_plan``): in token order,
  each prompt starts from the KV of the prefix it shares with the prompt
  before it and runs only its remaining tokens, attending to the prefix without
  a mask and to itself with the causal kernel, merged by log-sum-exp (one
  masked call would compute every masked score). On the demo's train split
  this skips 64 % of the prompt tokens. There is no padded prefill: on a CPU
  one prompt already keeps the matrix units busy. Each layer's KV (prefix
  then new tokens) is assembled once, by the attention (``_PrefillContext``).
* **Shared prefixes are held and read once while decoding**
  (``plan_segments``, ``_DecodeCache``): the batch's prompts are held as the
  segments of their prefix tree (the record that three task questions share;
  the history that a patient's later admission extends), each once, and all
  the rows under a segment attend to it together (more query rows per key: at
  few rows the products are bound by reading the KV, and a segment is read
  once per step, not once per prompt). Segments are cut into equal chunks, so a
  few attention calls per layer cover them whatever their lengths, each with
  as many query slots per chunk as its busiest segment has rows
  (``_slot_ranges``).
* **bf16 where the CPU has it** (``resolve_dtype``): with AVX512-BF16 a bf16
  matrix multiply runs ~5x faster than fp32 here. In bf16 on a CPU, attention
  is two matrix multiplies around a softmax (``_matmul_attention``) instead of
  torch's CPU flash kernel, which reaches only ~110-160 GFLOP/s: prefill
  attention runs in query blocks over the prefix and the block's own keys
  (``_blocked_causal_attention``), decode attention per KV chunk, its
  log-sum-exp read off the softmax's first entry. The scores are rounded to
  bf16 before the softmax, as in transformers' eager bf16 attention. bf16
  linear layers run on weights packed once for oneDNN (``_packed_linears``;
  same bits as ``F.linear``, which repacks at every call).
* **Native kernels where the CPU has AVX512-BF16** (``native``,
  ``kernels/decode_attention.cpp``, built with g++ on first use): decode
  attention fused per (chunk, KV head), reading each chunk's keys and values
  once and merging every part of a row (its prompt's segments, its own tokens)
  by log-sum-exp in the same call; and the prefill's softmax with the causal
  mask built in. Torch's ops on these shapes (a few query rows per chunk) ran
  at 6-40 % of the memory bandwidth or arithmetic; the kernel runs decode
  attention ~3x faster. Where it cannot build, the torch path above runs, and
  the fingerprint says which (``decode_attention_path``).
* **Decoding uses its own loop** with a pre-allocated KV cache for the
  generated tokens (``DynamicCache`` re-concatenates the whole cache at every
  step), stops rows at EOS and drops finished rows (and prompts whose rows are
  all finished) from the batch so late steps do not spend compute on them.

Sampling is seeded per sample: every row owns a ``torch.Generator`` seeded
with its sample seed, and draws exactly one uniform number from it per step
(inverse-CDF sampling from the temperature-scaled, top-p-truncated
distribution). A sample's randomness therefore depends only on its seed,
never on which other rows share its batch.

Caveat on reproducibility: the *logits* a row sees can differ in the last
float bits with the batch composition (matrix kernels block and sum
differently for different row counts; a prompt's prefix is reused from, and its
attention split by, the batch mates that share it), and a one-ulp difference can flip a
draw that falls on a boundary between two tokens. Bitwise reproduction is
therefore guaranteed for the same batch plan. ``plan_batches`` is a pure
function of the full job list, so a run interrupted and restarted over the
same job list re-creates the same batches (a caller that resumes should plan
over the full list and skip batches that are already done, rather than plan
over the remaining jobs only). On SmolLM2-size models in fp32 the samples are
usually identical across batch compositions anyway; tests/test_hf_sampler.py
records what holds on the tiny test model.

The decode-time attention is registered with transformers under
``ATTENTION_IMPLEMENTATION``: it is plain SDPA for every call except the
engine's own decode steps and shared-prefix prefills (which pass their cache or
prefix in a keyword argument), so a
model loaded with it behaves exactly as with ``attn_implementation="sdpa"``
everywhere else (training, ``generate``, ``option_logprobs``).
"""

from __future__ import annotations

import functools
import time
import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Cache, DynamicCache
from transformers.cache_utils import DynamicLayer

__all__ = [
    "ATTENTION_IMPLEMENTATION",
    "DTYPES",
    "ENGINE_REVISION",
    "DEFAULT_MAX_BATCH_TOKENS",
    "DEFAULT_MAX_ROWS",
    "PromptJob",
    "SampleOutput",
    "SamplerStats",
    "SamplingParams",
    "decode_attention_path",
    "load_model",
    "option_logprobs",
    "plan_batches",
    "prefill_plan",
    "resolve_dtype",
    "sample_all",
    "sample_batch",
    "stop_token_ids",
]

ATTENTION_IMPLEMENTATION = "corpus_shared_prefix_sdpa"
# Part of the transformers backend's fingerprint: bump it when a change of the
# engine changes what it samples for the same seeds (batch plan, prefill,
# numerics), so cached generations of the old engine are not mixed with new ones.
ENGINE_REVISION = 5
# Keyword argument through which a decode step hands its cache to the attention function.
_CACHE_KWARG = "corpus_decode_cache"
# Keyword argument through which a prefill hands it its `_PrefillContext`.
_PREFILL_KWARG = "corpus_prefill"

# Budget defaults: at most 128 samples advance together (a decode step has a
# fixed cost of ~30 ms on a 2-core CPU whatever its rows; measured on demo
# questions in bf16, 128 rows decoded ~20 % faster than 64), holding at most
# 64 Ki prompt tokens of KV (each prompt once): 1.5 GB in bf16, 3 GB in fp32
# for SmolLM2-135M.
DEFAULT_MAX_BATCH_TOKENS = 65_536
DEFAULT_MAX_ROWS = 128
# A top-p nucleus is looked for among the 32, then 1,024 likeliest tokens, and only
# then in the sorted vocabulary (sorting 49 K probabilities per row costs ~1.6 ms).
# Measured on SmolLM2 demo rationales (T 0.7, top-p 0.95): the nucleus has 1 token
# at the median, at most 32 in 96 % of draws, 64 in 98 %, 357 at most; a top-32
# of 64 rows costs 1.8 ms against 4.9 ms for a top-256.
_NUCLEUS_CANDIDATES = (32, 1024, 1 << 62)


@dataclass(frozen=True)
class SamplingParams:
    """Temperature 0 means greedy decoding (no random draw)."""

    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 160

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass(frozen=True)
class PromptJob:
    """One prompt and the seeds of its samples (one sample per seed)."""

    prompt_ids: list[int]
    seeds: list[int]


@dataclass(frozen=True)
class SampleOutput:
    """One sample. ``token_ids`` are the generated tokens, the stop token included
    when ``finish_reason`` is "eos"; ``text`` is their decoding without special tokens."""

    seed: int
    token_ids: list[int]
    text: str
    num_new_tokens: int
    finish_reason: str  # "eos" | "length"


@dataclass
class SamplerStats:
    """Counters a caller may pass in to see where the time goes (accumulated over calls)."""

    batches: int = 0
    prefill_forwards: int = 0
    decode_forwards: int = 0
    prompt_tokens: int = 0
    prefill_computed_tokens: int = 0  # prompt tokens run through the model (the rest reused a shared prefix)
    new_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0  # model steps and sampling


# --- loading ---------------------------------------------------------------------------


def _register_attention() -> None:
    """Make ATTENTION_IMPLEMENTATION known to transformers (idempotent). Its masks
    are SDPA's, since outside the engine's decode steps it *is* SDPA."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(ATTENTION_IMPLEMENTATION, _attention)
    AttentionMaskInterface.register(ATTENTION_IMPLEMENTATION, sdpa_mask)


DTYPES = ("auto", "float32", "bfloat16")


def resolve_dtype(name: str) -> str:
    """The compute dtype for `name`: "auto" is bfloat16 where the CPU multiplies
    bf16 natively (AVX512-BF16 or AMX: measured here, a bf16 matrix multiply ran
    5x faster than fp32) or on a CUDA GPU, else float32 (without those
    instructions bf16 is emulated, and far slower than fp32)."""
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    native = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or getattr(
        torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return "bfloat16" if native else "float32"


def load_model(path: str | Path, dtype: str = "float32", threads: int | None = None):
    """(model, tokenizer) from a local Hugging Face folder, in eval mode, with the
    engine's attention. `dtype` may be "auto" (`resolve_dtype`); `threads` sets
    torch's intra-op threads (process-wide)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if threads is not None:
        torch.set_num_threads(threads)
    _register_attention()
    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=getattr(torch, resolve_dtype(dtype)), attn_implementation=ATTENTION_IMPLEMENTATION
    )
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return model.eval(), tokenizer


def _use_engine_attention(model) -> None:
    """A model loaded elsewhere (e.g. with "sdpa") gets the engine's attention,
    which is SDPA outside the engine's decode steps."""
    if model.config._attn_implementation != ATTENTION_IMPLEMENTATION:
        _register_attention()
        model.set_attn_implementation(ATTENTION_IMPLEMENTATION)


def stop_token_ids(model, tokenizer) -> frozenset[int]:
    """Tokens that end a sample: the tokenizer's and the generation config's EOS,
    and the ChatML turn end ``<|im_end|>`` when the vocabulary has it."""
    ids: set[int] = set()
    eos = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif eos is not None:
        ids.update(int(token) for token in eos)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    im_end = tokenizer.get_vocab().get("<|im_end|>")
    if im_end is not None:
        ids.add(int(im_end))
    return frozenset(ids)


# --- planning --------------------------------------------------------------------------


def plan_batches(
    jobs: Sequence[PromptJob], max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS, max_rows: int = DEFAULT_MAX_ROWS
) -> list[list[int]]:
    """Job indexes grouped into batches: jobs sorted by their prompt tokens (so
    prompts that share a prefix, such as the questions about one record, are
    neighbours and land in one batch, where `_prefill` computes the shared part
    once) and packed greedily while a batch holds at most `max_rows` samples and
    at most `max_batch_tokens` prompt tokens (its prompts' KV, each prompt
    counted once: its k samples share it). A job over either bound alone gets a
    batch of its own (a job's samples are never split). Jobs without seeds ride
    along at no cost. A pure function of `jobs`: the same list always gives the
    same plan."""
    if max_batch_tokens < 1 or max_rows < 1:
        raise ValueError("max_batch_tokens and max_rows must be >= 1")
    order = sorted(range(len(jobs)), key=lambda index: (list(jobs[index].prompt_ids), index))
    batches: list[list[int]] = []
    current: list[int] = []
    tokens = rows = 0
    for index in order:
        job_rows = len(jobs[index].seeds)
        job_tokens = len(jobs[index].prompt_ids) if job_rows else 0
        if current and (tokens + job_tokens > max_batch_tokens or rows + job_rows > max_rows):
            batches.append(current)
            current, tokens, rows = [], 0, 0
        current.append(index)
        tokens += job_tokens
        rows += job_rows
    if current:
        batches.append(current)
    return batches


# --- decode-time cache and attention ---------------------------------------------------

# Decode attention reads the prompts' KV in chunks (one call per layer for all
# chunks of a level): the longest of these sizes that pads a level's segments by
# at most _CHUNK_PADDING of their keys (the shortest otherwise). Long chunks
# give the kernel long runs of keys; short ones keep short segments (the
# questions' own tails after a shared record) from carrying padding.
_CHUNK_SIZES = (512, 256, 128, 64)
_CHUNK_PADDING = 0.25


def _chunk_size(lengths: list[int]) -> int:
    real = sum(lengths)
    for size in _CHUNK_SIZES:
        if sum(-(-length // size) * size for length in lengths) <= (1 + _CHUNK_PADDING) * real:
            return size
    return _CHUNK_SIZES[-1]


# A prefix shared by several prompts of a batch is held once while decoding (and read
# once per step for all their rows) when it has at least this many tokens; a shorter
# one stays part of each prompt's own segment (a tiny shared segment costs a chunk of
# padding and an entry per row for little saved reading).
_SEGMENT_MIN_SHARED = 64
# Segments at least this long go to the decode cache's long-key level (long chunks), the
# rest to the short one: one chunk size for both would pad the questions' short
# tails to long chunks or cut long shared histories into many short ones.
_LONG_SEGMENT = 256


def plan_segments(prompts: Sequence[Sequence[int]]) -> list[tuple[list[int], int, int]]:
    """The batch's prompts cut into the segments their KV is held in while decoding:
    (prompts that share it, first token, end token). The segments are the prompts'
    prefix tree, with shared parts under _SEGMENT_MIN_SHARED tokens left to the
    prompts below them: the record three task questions share, and within it the
    history that a patient's later admission extends, are each held once. Every
    prompt is covered by the segments listing it, in token order, and keeps at
    least its last token in a segment of its own."""
    plan = prefill_plan(prompts)
    order = [index for index, _, _ in plan]
    shared = [reused for _, _, reused in plan]  # with the prompt before, in token order
    segments: list[tuple[list[int], int, int]] = []

    def cut(first: int, end: int, start: int) -> None:
        """Segments of the run order[first:end], whose prompts share their first `start` tokens."""
        members = order[first:end]
        if len(members) == 1:
            segments.append((members, start, len(prompts[members[0]])))
            return
        common = min(min(shared[first + 1 : end]), min(len(prompts[member]) for member in members) - 1)
        if common - start >= _SEGMENT_MIN_SHARED:
            segments.append((members, start, common))
            start = common
        splits = [position for position in range(first + 1, end) if shared[position] <= common]
        if not splits:  # the run shares nothing more in a subset: each prompt's rest is its own
            segments.extend(([member], start, len(prompts[member])) for member in members)
            return
        for sub_first, sub_end in zip([first, *splits], [*splits, end]):
            cut(sub_first, sub_end, start)

    if prompts:
        cut(0, len(order), 0)
    return segments


class _KVLevel:
    """One level of a decode batch's prompt KV: segments (`plan_segments`), each
    held once, cut into chunks of one size (`_chunk_size`; the last one padded and
    masked) stacked into one tensor per layer, shape (chunks, kv_heads, size,
    head_dim). Few attention calls per layer cover every chunk (flash-decoding's
    split over keys): long segments give the threads many chunks to share rather
    than one long row each. ``segment_rows`` gives the rows (of the batch's rows,
    in order) that attend to each segment; a row may attend to several (a shared
    history, the record after it, its question), or to none. Each chunk's query
    rows are its segment's rows. The chunks are attended in a few consecutive
    ranges (`_slot_ranges`), each laid out with as many query slots per chunk as
    its busiest segment has rows (empty slots are zero queries whose output is
    dropped), and each row's partial results over all its chunks are merged by
    log-sum-exp. With `kernels` (`native.DecodeKernels`), the KV is held in the
    kernel's layouts and one kernel call per layer does all of that."""

    def __init__(self, segment_keys: list[list], segment_values: list[list], segment_rows: list[list[int]],
                 rows: int, kernels=None):
        lengths = [keys[0].shape[-2] for keys in segment_keys]
        size = _chunk_size(lengths)
        self.chunk_segment = [segment for segment, length in enumerate(lengths) for _ in range(-(-length // size))]
        # Keys per chunk: `size`, less the padding of a segment's last chunk.
        chunk_length = [min(size, length - start) for length in lengths for start in range(0, length, size)]
        layers = range(len(segment_keys[0]))
        self.keys = [_chunk_stack([keys[layer] for keys in segment_keys], lengths, size) for layer in layers]
        self.values = [_chunk_stack([values[layer] for values in segment_values], lengths, size) for layer in layers]
        self.size = size
        self._kernels = kernels
        self.mask = None  # the torch path's: -inf on each chunk's padding (the kernels read chunk_length)
        if kernels is not None:
            # The kernel's layouts (kernels/decode_attention.cpp): each 16 keys' dimension
            # pairs, each dimension's key pairs; the vdpbf16ps operands, loaded as they lie.
            chunks, kv_heads, _, head_dim = self.keys[0].shape
            self.keys = [k.view(chunks, kv_heads, size // 16, 16, head_dim // 2, 2).permute(0, 1, 2, 4, 3, 5)
                         .contiguous() for k in self.keys]
            self.values = [v.view(chunks, kv_heads, size // 2, 2, head_dim).permute(0, 1, 2, 4, 3).contiguous()
                           for v in self.values]
            self.chunk_length = torch.tensor(chunk_length, dtype=torch.int32)
        elif any(length < size for length in chunk_length):
            self.mask = segment_keys[0][0].new_zeros((len(chunk_length), 1, 1, size))
            for chunk, length in enumerate(chunk_length):
                self.mask[chunk, ..., length:] = float("-inf")
        self.segment_rows = [sorted(set(members)) for members in segment_rows]
        self.rows = rows
        self._index_rows()

    def _index_rows(self) -> None:
        if self._kernels is not None:
            self._index_rows_for_kernel()
            return
        dummy = self.rows  # index of the zero query appended in attend()
        # A segment's chunks are consecutive: runs of (segment, first chunk, end chunk).
        runs: list[list[int]] = []
        for chunk, segment in enumerate(self.chunk_segment):
            if runs and runs[-1][0] == segment:
                runs[-1][2] = chunk + 1
            else:
                runs.append([segment, chunk, chunk + 1])
        self._ranges = []
        entries: list[list[int]] = [[] for _ in range(self.rows)]
        offset = 0  # of a range's first slot among all ranges' slots
        run_rows = [len(self.segment_rows[run[0]]) for run in runs]
        for first, end in _slot_ranges([run[2] - run[1] for run in runs], run_rows, self.size):
            slots = max(1, *run_rows[first:end])
            start, stop = runs[first][1], runs[end - 1][2]
            gather = [dummy] * ((stop - start) * slots)
            for chunk in range(start, stop):
                for slot, row in enumerate(self.segment_rows[self.chunk_segment[chunk]]):
                    gather[(chunk - start) * slots + slot] = row
                    entries[row].append(offset + (chunk - start) * slots + slot)
            self._ranges.append((start, stop, slots, torch.tensor(gather, dtype=torch.long)))
            offset += (stop - start) * slots
        # Each row's partial results, padded with the weightless entry appended after them.
        weightless = offset
        width = max((len(e) for e in entries), default=1)
        self._entries = torch.tensor([e + [weightless] * (width - len(e)) for e in entries], dtype=torch.long)

    def _index_rows_for_kernel(self) -> None:
        """The kernel's work list: each chunk that live rows attend to, with its
        segment's rows; an entry per (chunk, row), numbered in chunk order, and
        each row's entries (CSR arrays, int32)."""
        item_chunk: list[int] = []
        item_start, item_rows = [0], []
        entries: list[list[int]] = [[] for _ in range(self.rows)]
        for chunk, segment in enumerate(self.chunk_segment):
            members = self.segment_rows[segment]
            if not members:
                continue
            for row in members:
                entries[row].append(len(item_rows))
                item_rows.append(row)
            item_chunk.append(chunk)
            item_start.append(len(item_rows))
        row_start = [0]
        for row_entries in entries:
            row_start.append(row_start[-1] + len(row_entries))
        self._work = [torch.tensor(values, dtype=torch.int32) for values in (
            item_chunk, item_start, item_rows, row_start, [entry for row in entries for entry in row])]

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (positions among the current rows, ascending). The
        chunks of segments no kept row attends to stay where they are, left out
        of every call (`_slot_ranges`): dropping them would copy the level's KV."""
        position = {row: new for new, row in enumerate(rows)}
        self.segment_rows = [[position[row] for row in members if row in position] for members in self.segment_rows]
        self.rows = len(rows)
        self._index_rows()

    def attend(self, layer: int, q, scaling: float):
        """(out, log-sum-exp) per row for queries q (rows, kv_heads, groups, head_dim)
        over all its segments; a row without any gets zeros and -inf. Grouped-query
        heads share their KV head without copying it: they are its query rows."""
        rows, kv_heads, groups, head_dim = q.shape
        if self._kernels is not None:
            return self._attend_in_kernel(layer, q, scaling)
        if not self._ranges:
            return q.new_zeros(q.shape, dtype=torch.float32), q.new_full((rows, kv_heads, groups, 1), float("-inf"),
                                                                         dtype=torch.float32)
        q = torch.cat([q, q.new_zeros(1, kv_heads, groups, head_dim)])  # the empty slots' query
        outs, lses = [], []
        for start, stop, slots, gather in self._ranges:
            chunks = stop - start
            chunk_q = q.index_select(0, gather).view(chunks, slots, kv_heads, groups, head_dim)
            chunk_q = chunk_q.transpose(1, 2).reshape(chunks, kv_heads, slots * groups, head_dim)
            mask = None if self.mask is None else self.mask[start:stop]
            out, lse = _attend_with_lse(chunk_q, self.keys[layer][start:stop], self.values[layer][start:stop],
                                        scaling, mask)
            # (chunks, kv_heads, slots * groups, d) -> one entry per (chunk, slot), as gathered.
            for results, result in ((outs, out), (lses, lse)):
                results.append(result.reshape(chunks, kv_heads, slots, groups, -1).transpose(1, 2).reshape(
                    chunks * slots, kv_heads, groups, -1))
        out = torch.cat([*outs, outs[0].new_zeros(1, kv_heads, groups, head_dim)])
        lse = torch.cat([*lses, lses[0].new_full((1, kv_heads, groups, 1), float("-inf"))])
        row_out = out[self._entries]  # (rows, entries, kv_heads, groups, head_dim)
        row_lse = lse[self._entries]
        total = torch.logsumexp(row_lse, dim=1)
        # A row without a segment has only weightless entries: -inf - -inf is nan, its weight 0.
        weights = torch.exp(row_lse - total.unsqueeze(1)).nan_to_num_(0.0)
        return (row_out.float() * weights).sum(1), total

    def _attend_in_kernel(self, layer: int, q, scaling: float):
        rows, kv_heads, groups, head_dim = q.shape
        item_chunk, item_start, item_rows, row_start, row_entries = self._work
        q = q.contiguous()
        entry_out = q.new_empty((len(item_rows), kv_heads, groups, head_dim), dtype=torch.float32)
        entry_lse = q.new_empty((len(item_rows), kv_heads, groups), dtype=torch.float32)
        out = q.new_empty((rows, kv_heads, groups, head_dim), dtype=torch.float32)
        lse = q.new_empty((rows, kv_heads, groups, 1), dtype=torch.float32)
        code = self._kernels.level(
            self.keys[layer].data_ptr(), self.values[layer].data_ptr(), self.chunk_length.data_ptr(), self.size,
            kv_heads, groups, head_dim, q.data_ptr(), scaling, len(item_chunk), item_chunk.data_ptr(),
            item_start.data_ptr(), item_rows.data_ptr(), rows, row_start.data_ptr(), row_entries.data_ptr(),
            entry_out.data_ptr(), entry_lse.data_ptr(), out.data_ptr(), lse.data_ptr(), torch.get_num_threads())
        if code:
            raise RuntimeError(f"decode attention kernel refused its arguments (code {code})")
        return out, lse


def decode_attention_path(model) -> str:
    """'native' where the engine's decode steps for `model` run the native kernels
    (`_decode_kernels`), else 'torch'."""
    weight = next(model.parameters())
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    like = weight.new_empty((0, 0, head_dim))
    return "native" if _decode_kernels(like) is not None else "torch"


# The head sizes the native kernels are compiled for (kernels/decode_attention.cpp).
_KERNEL_HEAD_DIMS = (64, 128)


def _decode_kernels(like):
    """The native decode-attention kernels (`native`) for a batch whose KV is like
    `like`, or None (the torch path): bf16 on a CPU, heads of 64 or 128 dimensions
    (SmolLM2 and Qwen2.5-0.5B; Llama, Mistral, Qwen2.5-1.5B+), and the kernels
    built here."""
    if like.dtype != torch.bfloat16 or like.device.type != "cpu" or like.shape[-1] not in _KERNEL_HEAD_DIMS:
        return None
    from corpus.generate import native

    return native.decode_attention()


# What one more attention call costs, in score entries (chunk keys x query slots):
# about 100 us of fixed work here, against ~9 ns per entry (all heads, both products).
_RANGE_CALL_COST = 12_000
# What reading one key (and its value) costs, in the same entries: at few query rows
# the products are bound by reading the KV (~25 ns per key and layer from memory,
# measured here), so a chunk costs its keys x (slots + this), padded rows or not.
_KEY_READ_COST = 3


def _slot_ranges(run_chunks: list[int], run_rows: list[int], size: int) -> list[tuple[int, int]]:
    """Consecutive runs (a segment's chunks and its live rows) split into ranges
    [first, end), one attention call each, whose query slots are the busiest
    run's rows: the split that minimises the padded score entries computed and
    the keys read (_KEY_READ_COST each), plus _RANGE_CALL_COST per call. Runs
    without rows are left out (their keys stay in place, unread) unless padding
    across them is cheaper than another call. One call for all would pad every
    chunk to the busiest segment's rows (measured on demo batches: 40 % of the
    entries wasted once rows retire unevenly)."""
    count = len(run_chunks)
    best = [0] + [float("inf")] * count  # cost of the first j runs
    cut: list[int | None] = [0] * (count + 1)  # None: run j-1 is skipped
    for end in range(1, count + 1):
        if run_rows[end - 1] == 0:  # no row attends to it: no call needs it
            best[end], cut[end] = best[end - 1], None
        chunks = slots = 0
        for first in range(end - 1, -1, -1):
            chunks += run_chunks[first]
            slots = max(slots, run_rows[first])
            cost = best[first] + chunks * (max(slots, 1) + _KEY_READ_COST) * size + _RANGE_CALL_COST
            if cost < best[end]:
                best[end], cut[end] = cost, first
    ranges = []
    end = count
    while end > 0:
        if cut[end] is None:
            end -= 1
            continue
        ranges.append((cut[end], end))
        end = cut[end]
    return ranges[::-1]


def _chunk_stack(tensors: list, lengths: list[int], size: int):
    """(kv_heads, len_i, head_dim) tensors -> (chunks, kv_heads, size, head_dim): each
    tensor cut into chunks of `size` keys, its last chunk zero-padded (masked in attention)."""
    kv_heads, _, head_dim = tensors[0].shape
    chunks = sum(-(-length // size) for length in lengths)
    out = tensors[0].new_zeros((chunks, kv_heads, size, head_dim))
    chunk = 0
    for tensor, length in zip(tensors, lengths):
        for start in range(0, length, size):
            width = min(size, length - start)
            out[chunk, :, :width] = tensor[:, start : start + width]
            chunk += 1
    return out


class _GeneratedLayer(DynamicLayer):
    """One layer's KV of the rows' generated tokens, in a pre-allocated buffer
    (rows, kv_heads, max_new_tokens, head_dim) filled one slot per step
    (DynamicLayer re-concatenates its whole cache at every step). With `packed`,
    in the native kernels' layouts instead (kernels/decode_attention.cpp), zeroed
    so that slots not yet written weigh nothing."""

    is_croppable = False
    supports_early_init = False

    def __init__(self, like, rows: int, capacity: int, packed: bool = False) -> None:
        super().__init__()
        kv_heads, _, head_dim = like.shape
        self.packed = packed
        if packed:
            capacity = -(-capacity // 16) * 16
            self.keys = like.new_zeros((rows, kv_heads, capacity // 16, head_dim // 2, 16, 2))
            self.values = like.new_zeros((rows, kv_heads, capacity // 2, head_dim, 2))
        else:
            self.keys = like.new_empty((rows, kv_heads, capacity, head_dim))
            self.values = like.new_empty((rows, kv_heads, capacity, head_dim))
        self.capacity = capacity
        self.length = 0
        self.is_initialized = True
        self.dtype, self.device = self.keys.dtype, self.keys.device

    def update(self, key_states, value_states, *args, **kwargs):
        step = key_states.shape[-2]
        if self.packed:
            rows, kv_heads, _, head_dim = key_states.shape
            for position in range(self.length, self.length + step):
                index = position - self.length
                self.keys[:, :, position // 16, :, position % 16] = key_states[:, :, index].reshape(
                    rows, kv_heads, head_dim // 2, 2)
                self.values[:, :, position // 2, :, position % 2] = value_states[:, :, index]
            self.length += step
            return self.keys, self.values
        self.keys[:, :, self.length : self.length + step] = key_states
        self.values[:, :, self.length : self.length + step] = value_states
        self.length += step
        return self.keys[:, :, : self.length], self.values[:, :, : self.length]

    def get_seq_length(self) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0


class _DecodeCache(DynamicCache):
    """The KV of one decode batch: the prompts' KV in levels (`_KVLevel`) and each
    row's generated tokens (`_GeneratedLayer`).

    Jobs are numbered 0..J-1 for the batch; ``row_jobs`` gives each row's job.
    The prompts' KV is held in the segments of their prefix tree
    (`plan_segments`), each once: long ones in the first level, short ones (most
    often a question's own tail) in the second. A row attends to its prompt's
    segments and its own tokens, the parts merged by their log-sum-exp (the
    split-softmax identity flash-decoding uses). `kernels`: the native kernels
    to use (`native.DecodeKernels`), False for the torch path, None to use them
    where they run (`_decode_kernels`)."""

    def __init__(self, prompts: list[list[int]], prompt_keys: list[list], prompt_values: list[list],
                 row_jobs: list[int], capacity: int, kernels=None):
        rows_of_job: dict[int, list[int]] = {}
        for row, job in enumerate(row_jobs):
            rows_of_job.setdefault(job, []).append(row)
        long_parts: tuple[list, list, list] = ([], [], [])
        short_parts: tuple[list, list, list] = ([], [], [])
        for members, start, end in plan_segments(prompts):
            parts = long_parts if end - start >= _LONG_SEGMENT else short_parts
            parts[0].append([k[:, start:end] for k in prompt_keys[members[0]]])
            parts[1].append([v[:, start:end] for v in prompt_values[members[0]]])
            parts[2].append([row for job in members for row in rows_of_job.get(job, ())])
        like = prompt_keys[0]
        self.kernels = _decode_kernels(like[0]) if kernels is None else kernels or None
        self.levels = [_KVLevel(*parts, len(row_jobs), self.kernels) for parts in (long_parts, short_parts)
                       if parts[0]]
        Cache.__init__(self, layers=[_GeneratedLayer(like[layer], len(row_jobs), capacity, self.kernels is not None)
                                     for layer in range(len(like))])

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (positions among the current rows, ascending)."""
        selected = torch.tensor(rows, dtype=torch.long)
        for layer in self.layers:
            layer.keys = layer.keys.index_select(0, selected)
            layer.values = layer.values.index_select(0, selected)
        for level in self.levels:
            level.keep(rows)

    def attend(self, layer_idx: int, query, key, value, scaling: float):
        """Attention of one new token per row over its prompt's KV (the levels) and
        its own generated tokens' KV (`key`, `value`)."""
        rows, heads, _, head_dim = query.shape
        kv_heads = key.shape[1]
        # The query heads of one KV head become that KV head's query rows.
        q = query.reshape(rows, kv_heads, heads // kv_heads, head_dim)
        if self.kernels is not None:
            return self._attend_in_kernels(layer_idx, q, scaling)
        parts = [_attend_with_lse(q, key, value, scaling)]
        parts += [level.attend(layer_idx, q, scaling) for level in self.levels]
        out, _ = _merge_by_lse(parts)
        # The log-sum-exps are float32 whatever the model's dtype: return the model's.
        return out.to(query.dtype).reshape(rows, 1, heads, head_dim)

    def _attend_in_kernels(self, layer_idx: int, q, scaling: float):
        rows, kv_heads, groups, head_dim = q.shape
        q = q.contiguous()
        parts = [level.attend(layer_idx, q, scaling) for level in self.levels]
        own = self.layers[layer_idx]
        result = q.new_empty((rows, 1, kv_heads * groups, head_dim))
        outs, lses = self.kernels.pointers([p[0] for p in parts]), self.kernels.pointers([p[1] for p in parts])
        code = self.kernels.finish(own.keys.data_ptr(), own.values.data_ptr(), own.capacity, own.length, kv_heads,
                                   groups, head_dim, q.data_ptr(), scaling, rows, len(parts), outs, lses,
                                   result.data_ptr(), torch.get_num_threads())
        if code:
            raise RuntimeError(f"decode attention kernel refused its arguments (code {code})")
        return result


def _merge_by_lse(parts):
    """Attention over several key sets at once from its parts over each: (out, lse)
    pairs with the same query rows, weighted by their share of the total softmax
    mass (the split-softmax identity flash-decoding uses). Returns (out, lse)."""
    total = parts[0][1]
    for _, lse in parts[1:]:
        total = torch.logaddexp(total, lse)
    return sum(out * torch.exp(lse - total) for out, lse in parts), total


# Below this a bf16 probability may be subnormal (bf16's smallest normal is ~1.2e-38)
# and lose relative precision: the log-sum-exp is then read off the largest entry.
_SMALLEST_EXACT_PROBABILITY = 1e-30


def _attend_with_lse(q, k, v, scale: float, mask=None, causal: bool = False):
    """softmax(q k^T * scale + mask) v and the log-sum-exp of each score row, for
    (batch, heads, queries, head_dim) tensors. In bf16 on a CPU, two matrix
    multiplies around a softmax (`_matmul_attention`); otherwise, on CPU, torch's
    fused flash kernel returns both (about twice as fast as the three-step version)."""
    if not causal and _matmul_attention(q):
        scores = torch.matmul(q * scale, k.transpose(-1, -2))
        if mask is not None:
            scores.add_(mask)
        probs = torch.softmax(scores, dim=-1)
        # The softmax's normaliser read off its first entry, p_0 = exp(s_0 - lse): as
        # exact as any entry (bf16 keeps 2^-8 relative over fp32's range), and free,
        # where a max over the scores (with indices) took as long as the softmax itself.
        # An entry so small that bf16 loses it (a score ~70 below the row's largest, or
        # a masked first key) is useless: then the largest entry is read, p_max =
        # exp(s_max - lse) (probabilities rise with scores, so both maxima are one entry).
        first = probs[..., :1].float()
        if bool((first < _SMALLEST_EXACT_PROBABILITY).any()):
            lse = scores.amax(dim=-1, keepdim=True).float() - probs.amax(dim=-1, keepdim=True).float().log()
        else:
            lse = scores[..., :1].float() - first.log()
        return torch.matmul(probs, v), lse
    if q.device.type == "cpu":
        # The fused kernel reads rows as dense vectors: the last dimension must be unit-stride.
        q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, causal, attn_mask=mask, scale=scale
        )[:2]
        return out, lse.unsqueeze(-1)
    scores = torch.matmul(q * scale, k.transpose(-1, -2)).float()
    if mask is not None:
        scores = scores + mask
    if causal:  # queries and keys start at the same position
        scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), float("-inf"))
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    return torch.matmul(torch.exp(scores - lse).to(v.dtype), v), lse


def _attend_after_prefix(query, key, value, prefix_key, prefix_value, scaling: float):
    """Attention of a prompt's new tokens (queries, and their own keys/values,
    which start right after the prefix) over a prefix already in the KV and over
    themselves: the rectangle over the prefix without a mask, the triangle over
    themselves with the causal kernel, merged by log-sum-exp. Cheaper than one
    masked call over prefix + new keys, which would compute every masked score."""
    heads, kv_heads = query.shape[1], key.shape[1]
    groups = heads // kv_heads
    # The prefix part has no mask: the query heads of one KV head can be its query rows.
    batch, _, length, head_dim = query.shape
    grouped = query.reshape(batch, kv_heads, groups * length, head_dim)
    prefix_out, prefix_lse = _attend_with_lse(grouped, prefix_key, prefix_value, scaling)
    prefix_out = prefix_out.reshape(batch, heads, length, head_dim)
    prefix_lse = prefix_lse.reshape(batch, heads, length, 1)
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    out, _ = _merge_by_lse([(prefix_out, prefix_lse), _attend_with_lse(query, key, value, scaling, causal=True)])
    return out.to(query.dtype).transpose(1, 2).contiguous()  # (batch, length, heads, head_dim), as SDPA's


def _prefill_attention(module, query, key, value, context: _PrefillContext, scaling: float):
    """Attention of one prompt's new tokens (a prefill without padding) over the
    reused prefix, if any, and over themselves, causally; records the layer's
    whole KV in `context`. Output (1, length, heads, head_dim), as SDPA's."""
    layer = module.layer_idx
    prefix_key = None if context.prefix_keys is None else context.prefix_keys[layer]
    prefix_value = None if context.prefix_values is None else context.prefix_values[layer]
    whole_key = key if prefix_key is None else torch.cat([prefix_key, key], dim=-2)
    whole_value = value if prefix_value is None else torch.cat([prefix_value, value], dim=-2)
    context.keys_out[layer], context.values_out[layer] = whole_key[0], whole_value[0]
    if _matmul_attention(query):
        return _blocked_causal_attention(query, whole_key, whole_value, whole_key.shape[-2] - key.shape[-2], scaling)
    if prefix_key is not None:
        return _attend_after_prefix(query, key, value, prefix_key, prefix_value, scaling)
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, None, scaling=scaling, is_causal=True)[0]


def _matmul_attention(query) -> bool:
    """Attention as two bf16 matrix multiplies around a softmax, rather than torch's
    CPU flash kernel: on a CPU with native bf16 the multiplies run at ~800 GFLOP/s
    where the flash kernel reaches ~110-160 (measured here: 1.4-2.6x faster prefill
    attention, ~1.5x decode). Scores are rounded to bf16 before the softmax, as
    transformers' eager bf16 attention does. In float32 the flash kernel is faster."""
    return query.device.type == "cpu" and query.dtype == torch.bfloat16


# Query rows per block of the blocked prefill attention: a block's scores (all heads)
# stay under this many bytes, so they are still in cache when the softmax and the
# second multiply read them (measured: 8 MB blocks 1.3-2x faster than one 100 MB block).
_BLOCK_SCORE_BYTES = 8 << 20
_BLOCK_ROWS = 256


@functools.lru_cache(maxsize=8)
def _future_mask(block: int, groups: int):
    """(block * groups, block): key j of a block is masked for row (i, group) when
    j > i. Built once per shape, not per layer and prompt (only ever read)."""
    return torch.ones(block, block, dtype=torch.bool).triu(1).repeat_interleave(groups, dim=0)


def _blocked_causal_attention(query, key, value, prefix_length: int, scaling: float):
    """softmax(q k^T) v for a prompt's new tokens (query (1, heads, n, head_dim))
    over key/value (1, kv_heads, prefix_length + n, head_dim): every prefix key
    and the new keys up to each query's own position. Query blocks in position
    order: a block's scores cover only the keys up to its last position (the
    masked triangle is one block's diagonal), and grouped-query heads are their
    KV head's query rows (the KV is not repeated)."""
    _, heads, length, head_dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    keys, values = key[0], value[0]
    # Rows ordered (position, group) per KV head: a block of positions is a block of rows.
    q = (query[0] * scaling).view(kv_heads, groups, length, head_dim).transpose(1, 2).reshape(
        kv_heads, length * groups, head_dim)
    block = max(16, min(length, _BLOCK_ROWS, _BLOCK_SCORE_BYTES // (heads * keys.shape[-2] * query.element_size())))
    # The native softmax masks the future itself and runs ~2x faster than torch's in
    # bf16 (where the softmax was ~40 % of a long prompt's prefill).
    kernels = _decode_kernels(keys)
    future = None if kernels is not None else _future_mask(block, groups)
    out = torch.empty_like(q)
    for start in range(0, length, block):
        end = min(length, start + block)
        visible = prefix_length + end
        scores = torch.matmul(q[:, start * groups : end * groups], keys[:, :visible].transpose(-1, -2))
        if kernels is not None:  # in place: a fresh matmul output is contiguous
            code = kernels.causal_softmax(scores.data_ptr(), kv_heads, (end - start) * groups, visible, groups,
                                          prefix_length + start + 1, torch.get_num_threads())
            if code:
                raise RuntimeError(f"causal softmax kernel refused its arguments (code {code})")
            probs = scores
        else:
            scores[:, :, prefix_length + start : visible].masked_fill_(
                future[: (end - start) * groups, : end - start], float("-inf"))
            probs = torch.softmax(scores, dim=-1)
        torch.matmul(probs, values[:, :visible], out=out[:, start * groups : end * groups])
    return out.view(kv_heads, length, groups, head_dim).transpose(0, 1).reshape(1, length, heads, head_dim)


def _attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """ATTENTION_IMPLEMENTATION: the engine's decode attention when a decode step
    passes its cache, its prefix-sharing prefill when a prefill passes a
    `_PrefillContext`, SDPA otherwise."""
    cache = kwargs.pop(_CACHE_KWARG, None)
    context = kwargs.pop(_PREFILL_KWARG, None)
    if context is not None:
        if attention_mask is not None or query.shape[0] != 1:
            raise RuntimeError("the engine's prefill expects one unpadded prompt per call (no attention mask)")
        return _prefill_attention(module, query, key, value, context, scaling), None
    if cache is None or query.shape[2] != 1:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    return cache.attend(module.layer_idx, query, key, value, scaling), None


# --- sampling --------------------------------------------------------------------------


def _nucleus_pick(probs_sorted, indices, top_p: float, uniforms):
    """Inverse-CDF draw from each row's top-p nucleus. `probs_sorted` holds each
    row's probabilities in descending order (or a prefix of them that covers
    top_p), `indices` their token ids, `uniforms` one U[0,1) per row."""
    cumulative = probs_sorted.cumsum(-1)
    # A token is in the nucleus when the mass before it is still below top_p (the first always is).
    in_nucleus = (cumulative - probs_sorted) < top_p
    kept = probs_sorted * in_nucleus
    kept_cumulative = kept.cumsum(-1)
    target = uniforms * kept_cumulative[:, -1]
    position = (kept_cumulative <= target.unsqueeze(-1)).sum(-1)
    # Rounding can put the target at the very end: stay inside the nucleus.
    position = torch.minimum(position, in_nucleus.sum(-1) - 1)
    return indices.gather(-1, position.unsqueeze(-1)).squeeze(-1)


def _draw_tokens(logits, generators: Sequence[torch.Generator], params: SamplingParams) -> list[int]:
    """One token per row; row i's randomness is one uniform from generators[i]."""
    if params.temperature == 0:
        return logits.argmax(-1).tolist()
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    uniforms = torch.tensor([torch.rand((), generator=g, dtype=torch.float64).item() for g in generators])
    uniforms = uniforms.to(probs.dtype)
    vocab = probs.shape[-1]
    if params.top_p >= 1:
        # The whole distribution, in vocabulary order: no sort needed.
        return _nucleus_pick(probs, torch.arange(vocab).expand_as(probs), 2.0, uniforms).tolist()
    # The nucleus is found among the likeliest tokens: a top-k is far cheaper than
    # sorting the vocabulary, which only rows with a flat distribution need.
    tokens = torch.empty(len(generators), dtype=torch.long)
    pending = torch.arange(len(generators))
    for candidates in _NUCLEUS_CANDIDATES:
        rows = probs.index_select(0, pending)
        if candidates >= vocab:
            top_probs, top_indices = rows.sort(dim=-1, descending=True, stable=True)
            covered = torch.ones(len(pending), dtype=torch.bool)
        else:
            top_probs, top_indices = rows.topk(candidates, dim=-1)
            covered = top_probs.sum(-1) >= params.top_p
        tokens[pending[covered]] = _nucleus_pick(
            top_probs[covered], top_indices[covered], params.top_p, uniforms[pending[covered]]
        )
        pending = pending[~covered]
        if len(pending) == 0:
            break
    return tokens.tolist()


# --- one batch -------------------------------------------------------------------------


def _common_prefix(first: Sequence[int], second: Sequence[int]) -> int:
    length = min(len(first), len(second))
    for position in range(length):
        if first[position] != second[position]:
            return position
    return length


def prefill_plan(prompts: Sequence[Sequence[int]]) -> list[tuple[int, int, int]]:
    """The order in which a batch's prompts are prefilled and what each reuses:
    (prompt index, index of the prompt whose KV it starts from or -1, tokens
    reused). Prompts go in token order, so each reuses the longest prefix it
    shares with any prompt before it: its neighbour's. At least one token is
    always computed (its logits start the samples). The tokens computed in all
    are those of the prompts' prefix tree."""
    order = sorted(range(len(prompts)), key=lambda index: (list(prompts[index]), index))
    plan: list[tuple[int, int, int]] = []
    previous = -1
    for index in order:
        reused = 0 if previous < 0 else min(_common_prefix(prompts[previous], prompts[index]), len(prompts[index]) - 1)
        plan.append((index, previous if reused else -1, reused))
        previous = index
    return plan


class _PrefillContext:
    """What a prefill forward hands its attention (through _PREFILL_KWARG): the
    per-layer KV, shape (1, kv_heads, len, head_dim), of the prefix it reuses
    (None: nothing reused); the attention leaves each layer's whole KV (prefix
    then new tokens, shape (kv_heads, len, head_dim)) in ``keys_out`` and
    ``values_out``, so the prompt's cache is concatenated once."""

    def __init__(self, prefix_keys: list | None, prefix_values: list | None):
        self.prefix_keys, self.prefix_values = prefix_keys, prefix_values
        self.keys_out: dict[int, torch.Tensor] = {}
        self.values_out: dict[int, torch.Tensor] = {}


def _prefill(model, prompts: list[list[int]], stats: SamplerStats | None):
    """Each prompt's per-layer KV, shape (kv_heads, len, head_dim), and its last
    logits. A prompt that shares a prefix with an earlier one (the same patient
    context under another question; a patient's history up to an earlier visit)
    computes only the tokens after it, attending to the prefix's KV
    (`prefill_plan`). Questions about one record share most of their prompt, so
    this removes most of the prefill work of a real question set."""
    keys: list[list | None] = [None] * len(prompts)
    values: list[list | None] = [None] * len(prompts)
    last_logits: list = [None] * len(prompts)
    layers = range(model.config.num_hidden_layers)
    for index, source, reused in prefill_plan(prompts):
        prompt = prompts[index]
        input_ids = torch.tensor([prompt[reused:]], dtype=torch.long)
        if reused:
            context = _PrefillContext([k[:, :reused].unsqueeze(0) for k in keys[source]],
                                      [v[:, :reused].unsqueeze(0) for v in values[source]])
        else:
            context = _PrefillContext(None, None)
        output = model(
            input_ids=input_ids, position_ids=torch.arange(reused, len(prompt)).unsqueeze(0),
            past_key_values=DynamicCache(config=model.config), use_cache=True, logits_to_keep=1,
            **{_PREFILL_KWARG: context},
        )
        keys[index] = [context.keys_out[layer] for layer in layers]
        values[index] = [context.values_out[layer] for layer in layers]
        last_logits[index] = output.logits[0, -1]
        if stats is not None:
            stats.prefill_forwards += 1
            stats.prompt_tokens += len(prompt)
            stats.prefill_computed_tokens += input_ids.shape[1]
    return keys, values, torch.stack(last_logits)


def _weights_major_linear(self, x):
    """nn.Linear.forward computed as (W @ x^T)^T. A decode step multiplies each
    weight by only a few rows; in that shape MKL's x @ W^T reads the weights at a
    fraction of this CPU's memory bandwidth, while W @ x^T streams them (measured
    on SmolLM2: a decode step 13-30 % faster at 6-16 rows, ~7 % at 64)."""
    flat = x.reshape(-1, x.shape[-1]).t()
    if self.bias is None:
        out = torch.mm(self.weight, flat)
    else:
        out = torch.addmm(self.bias.unsqueeze(-1), self.weight, flat)
    # Contiguous like F.linear's output: downstream views and kernels expect it.
    return out.t().contiguous().reshape(*x.shape[:-1], self.weight.shape[0])


@contextmanager
def _patched_linears(model, forward, wanted):
    """Plain nn.Linear layers of `model` for which `wanted(module)` holds use
    `forward` inside the block; restored on exit."""
    with torch.inference_mode():
        patched = [module for module in model.modules()
                   if type(module) is torch.nn.Linear and "forward" not in module.__dict__ and wanted(module)]
    for module in patched:
        module.forward = types.MethodType(forward, module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward


def _decode_linears(model):
    """Plain nn.Linear layers of `model` use _weights_major_linear inside the
    block (decode steps only: prefill rows are many, where the usual layout wins)."""
    # Measured for MKL's fp32 kernels only: in bf16 (oneDNN) F.linear is the faster layout.
    return _patched_linears(model, _weights_major_linear, lambda module: module.weight.dtype == torch.float32)


def _packed_linear(self, x):
    """nn.Linear.forward through oneDNN with the weight packed once in its blocked
    layout (`_packable`). F.linear on a bf16 CPU tensor repacks the weight at every
    call; packed once, the same products (bitwise, checked when packing) run 1.1-1.4x
    faster: measured on SmolLM2-shaped weights, 4.5 -> 3.3 ms at 4 rows, 8.0 -> 6.5 ms
    at 32, for 60 weights of 576x1536."""
    flat = x.reshape(-1, x.shape[-1])
    flat = flat if flat.is_contiguous() else flat.contiguous()
    out = torch.ops.mkldnn._linear_pointwise(flat, self._corpus_packed, self.bias, "none", [], "")
    return out.reshape(*x.shape[:-1], out.shape[-1])


# The row count oneDNN packs weights for (any row count runs on the packed weight).
_PACK_ROWS_HINT = 64


def _packable(module) -> bool:
    """A bf16 CPU nn.Linear whose weight oneDNN can pack, with a packed copy that
    gives F.linear's bits (checked once per weight; kept on the module)."""
    weight = module.weight
    if weight.dtype != torch.bfloat16 or weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    key = (weight.data_ptr(), weight._version)
    if getattr(module, "_corpus_packed_key", None) == key:
        return module._corpus_packed is not None
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), _PACK_ROWS_HINT)
        probe = torch.randn(3, weight.shape[1], generator=torch.Generator().manual_seed(0)).to(weight.dtype)
        same = torch.equal(torch.ops.mkldnn._linear_pointwise(probe, packed, module.bias, "none", [], ""),
                           torch.nn.functional.linear(probe, weight, module.bias))
    except (RuntimeError, AttributeError):
        packed, same = None, False
    module._corpus_packed_key, module._corpus_packed = key, packed if same else None
    return same


def _packed_linears(model):
    """bf16 nn.Linear layers of `model` run on weights packed once (`_packed_linear`)
    inside the block (the packed copies stay on the modules for the next batch)."""
    return _patched_linears(model, _packed_linear, _packable)


def _finish(token: int, produced: int, stop_ids: frozenset[int], max_new_tokens: int) -> str | None:
    if token in stop_ids:
        return "eos"
    if produced >= max_new_tokens:
        return "length"
    return None


def sample_batch(
    model,
    tokenizer,
    jobs: Sequence[PromptJob],
    params: SamplingParams,
    *,
    on_tokens: Callable[[int], None] | None = None,
    stats: SamplerStats | None = None,
) -> list[list[SampleOutput]]:
    """Sample every job's seeds in one batch; outputs per job, in seed order.
    Run the jobs of one `plan_batches` batch together for reproducible results.
    A model not loaded by `load_model` is switched to the engine's attention
    (SDPA outside the engine's decode steps). `on_tokens(n)` is called after each
    step with the number of tokens it drew; `stats` accumulates counters."""
    _use_engine_attention(model)
    stop_ids = stop_token_ids(model, tokenizer)
    results: list[list[SampleOutput]] = [[] for _ in jobs]
    live_jobs = [index for index, job in enumerate(jobs) if job.seeds]
    if not live_jobs:
        return results
    for index in live_jobs:
        if not jobs[index].prompt_ids:
            raise ValueError(f"job {index}: empty prompt")

    # Rows in job-major order; row_job numbers jobs by their place in live_jobs.
    row_job = [position for position, index in enumerate(live_jobs) for _ in jobs[index].seeds]
    row_seed = [seed for index in live_jobs for seed in jobs[index].seeds]
    row_owner = [index for index in live_jobs for _ in jobs[index].seeds]
    prompt_len = [len(jobs[live_jobs[job]].prompt_ids) for job in row_job]
    generators = [torch.Generator().manual_seed(seed) for seed in row_seed]

    with torch.inference_mode(), _packed_linears(model):
        started = time.perf_counter()
        prompt_keys, prompt_values, prompt_logits = _prefill(model, [jobs[i].prompt_ids for i in live_jobs], stats)
        prefilled = time.perf_counter()
        cache = _DecodeCache([jobs[i].prompt_ids for i in live_jobs], prompt_keys, prompt_values, row_job,
                             params.max_new_tokens)
        del prompt_keys, prompt_values  # the cache holds its own (chunked) copies: free the prefill's
        first_logits = prompt_logits.index_select(0, torch.tensor(row_job))
        with _decode_linears(model):
            generated = _decode(model, cache, first_logits, prompt_len, generators, params, stop_ids, on_tokens, stats)
        finished = time.perf_counter()

    for row, (tokens, reason) in enumerate(generated):
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        results[row_owner[row]].append(SampleOutput(row_seed[row], tokens, text, len(tokens), reason))
    if stats is not None:
        stats.batches += 1
        stats.prefill_seconds += prefilled - started
        stats.decode_seconds += finished - prefilled
        stats.new_tokens += sum(len(tokens) for tokens, _ in generated)
    return results


def _decode(model, cache, logits, prompt_len, generators, params, stop_ids, on_tokens, stats):
    """The decode loop: draw, retire finished rows, run one step for the rest.
    Returns (token ids, finish reason) per row."""
    rows = len(prompt_len)
    tokens: list[list[int]] = [[] for _ in range(rows)]
    reasons: list[str | None] = [None] * rows
    live = list(range(rows))  # the rows still in the batch, in the cache's row order
    for step in range(params.max_new_tokens):
        drawn = _draw_tokens(logits, [generators[row] for row in live], params)
        still: list[int] = []
        for position, (row, token) in enumerate(zip(live, drawn)):
            tokens[row].append(token)
            reasons[row] = _finish(token, step + 1, stop_ids, params.max_new_tokens)
            if reasons[row] is None:
                still.append(position)
        if on_tokens is not None:
            on_tokens(len(live))
        if not still:
            break
        if len(still) < len(live):
            # Retire finished rows at once: a step costs in proportion to the rows
            # (and prompts) it carries, and dropping them copies little.
            cache.keep(still)
            live = [live[position] for position in still]
            drawn = [drawn[position] for position in still]
        input_ids = torch.tensor(drawn, dtype=torch.long).unsqueeze(-1)
        position_ids = torch.tensor([prompt_len[row] + step for row in live], dtype=torch.long).unsqueeze(-1)
        output = model(
            input_ids=input_ids, position_ids=position_ids, past_key_values=cache, use_cache=True,
            **{_CACHE_KWARG: cache},
        )
        logits = output.logits[:, -1]
        if stats is not None:
            stats.decode_forwards += 1
    return list(zip(tokens, reasons))


# --- many batches ----------------------------------------------------------------------


def sample_all(
    model,
    tokenizer,
    jobs: Sequence[PromptJob],
    params: SamplingParams,
    *,
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
    max_rows: int = DEFAULT_MAX_ROWS,
    on_tokens: Callable[[int], None] | None = None,
    stats: SamplerStats | None = None,
) -> Iterator[tuple[list[int], list[list[SampleOutput]]]]:
    """Run every batch of `plan_batches(jobs, ...)`, yielding (job indexes,
    outputs per job) as each batch completes, so a caller can flush finished
    work to disk batch by batch."""
    for batch in plan_batches(jobs, max_batch_tokens, max_rows):
        batch_jobs = [jobs[index] for index in batch]
        outputs = sample_batch(model, tokenizer, batch_jobs, params, on_tokens=on_tokens, stats=stats)
        yield batch, outputs


# --- option scoring --------------------------------------------------------------------


def option_logprobs(model, tokenizer, prompt_ids: Sequence[int], options: Sequence[str]) -> list[float]:
    """Sum of the log-probabilities of each option's tokens right after the prompt
    (the parser's last-resort answer, `parse_answer(..., logprob_fn=...)`).
    The prompt is run once; the options then run as one batch against a copy of
    its KV per option (cheaper than re-running a long prompt per option)."""
    if not prompt_ids:
        raise ValueError("option_logprobs needs a non-empty prompt")
    encoded = [tokenizer(option, add_special_tokens=False)["input_ids"] for option in options]
    if not encoded:
        return []
    if any(not ids for ids in encoded):
        raise ValueError("an option encodes to no tokens")
    head, last = list(prompt_ids[:-1]), int(prompt_ids[-1])
    width = 1 + max(len(ids) for ids in encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    # Each row: the prompt's last token then the option, right-padded (padding sits after
    # every scored position, so it changes nothing that is scored).
    rows = torch.tensor([[last, *ids] + [pad] * (width - 1 - len(ids)) for ids in encoded], dtype=torch.long)
    option_mask = torch.tensor([[1] * (1 + len(ids)) + [0] * (width - 1 - len(ids)) for ids in encoded])
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        if head:
            model(input_ids=torch.tensor([head], dtype=torch.long), past_key_values=cache, use_cache=True,
                  logits_to_keep=1)
            cache.batch_repeat_interleave(len(encoded))
        attention_mask = torch.cat([torch.ones(len(encoded), len(head), dtype=torch.long), option_mask], dim=1)
        position_ids = torch.arange(len(head), len(head) + width).expand(len(encoded), -1)
        logits = model(
            input_ids=rows, attention_mask=attention_mask, position_ids=position_ids, past_key_values=cache,
            use_cache=True,
        ).logits
        log_probs = torch.log_softmax(logits.float(), dim=-1)
    scores = []
    for row, ids in enumerate(encoded):
        picked = log_probs[row, torch.arange(len(ids)), torch.tensor(ids)]
        scores.append(float(picked.sum()))
    return scores
