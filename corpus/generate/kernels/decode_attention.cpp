// Decode attention over a batch's shared prompt KV (one `_KVLevel` and layer), fused:
// scores, softmax and the value product of every (chunk, KV head) in one pass that
// reads the chunk's keys and values once, then each row's partial results over its
// chunks merged by log-sum-exp (flash-decoding's split over keys).
//
// Why a kernel: torch's three-step attention on these shapes (a few query rows per
// chunk of 64-512 keys) ran at 6-30 % of this CPU's memory bandwidth or arithmetic,
// and ~20 ops per call cost more than the work at few rows.
//
// bf16 products accumulate in fp32 with AVX512-BF16 `vdpbf16ps` (bf16 x bf16 is exact
// in fp32); the softmax is fp32, its probabilities rounded to bf16 for the value
// product (as torch's bf16 path does). Each (chunk, KV head) is one thread's work and
// each row's merge is one thread's work, in a fixed order: results do not depend on
// the thread count or schedule.
//
// Layouts (bf16 as uint16_t), built once per batch by the caller:
//   keys   [chunks][kv_heads][size/16][head_dim/2][16][2]  16 keys' dimension pairs
//   values [chunks][kv_heads][size/2][head_dim][2]          each dimension's key pairs
//   query  [rows][kv_heads][groups][head_dim]

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <vector>

#if !defined(__AVX512F__) || !defined(__AVX512BF16__) || !defined(__AVX512BW__)
#error "needs AVX512F, AVX512BW and AVX512-BF16"
#endif

namespace {

constexpr int kMaxSize = 512;  // keys per chunk
constexpr int kMaxGroups = 64;  // query heads per KV head, at most (corpus_decode_finish)

// Query vectors per pass for a head size: their value accumulators (head_dim / 16
// registers each) and one key pair's values must fit in the 32 vector registers.
template <int HeadDim>
constexpr int block_for() {
  return HeadDim == 64 ? 6 : 3;
}

// exp(x) for x <= 0 (scores minus their maximum), fp32; 0 below -87.3.
// Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, and a degree-6 polynomial:
// relative error ~2e-7, well inside bf16's 4e-3.
inline __m512 exp_nonpositive(__m512 x) {
  const __m512 log2e = _mm512_set1_ps(1.44269504088896341f);
  const __m512 ln2_hi = _mm512_set1_ps(0.693359375f);
  const __m512 ln2_lo = _mm512_set1_ps(-2.12194440e-4f);
  __mmask16 tiny = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.3f), _CMP_LT_OQ);
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.3f));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, ln2_hi, x);
  r = _mm512_fnmadd_ps(n, ln2_lo, r);
  __m512 p = _mm512_set1_ps(1.0f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  __m512 result = _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
  return _mm512_maskz_mov_ps(static_cast<__mmask16>(~tiny), result);
}

// log(e^a + e^b): how partial results over two key sets merge (the split-softmax
// identity). -inf (a part without keys, or no part yet) leaves the other.
inline float log_add_exp(float a, float b) {
  const float high = a > b ? a : b, low = a > b ? b : a;
  return low == -INFINITY ? high : high + log1pf(expf(low - high));
}

// One (chunk, KV head): `count` query vectors (rows x groups, in that order) over the
// chunk's first `length` keys. Writes each vector's normalised output and log-sum-exp.
template <int HeadDim>
void attend_chunk(const uint16_t* keys, const uint16_t* values, int length, const uint32_t* const* query_pairs,
                  int count, float scale, float* const* outs, float* const* lses) {
  constexpr int kBlock = block_for<HeadDim>();
  constexpr int kHeadDim = HeadDim;
  constexpr int kVectors = HeadDim / 16;  // registers per fp32 row of head_dim
  alignas(64) float scores[kBlock][kMaxSize];
  alignas(64) uint16_t probs[kBlock][kMaxSize];
  const int key_blocks = (length + 15) / 16;
  const int key_pairs = (length + 1) / 2;
  for (int first = 0; first < count; first += kBlock) {
    const int block = count - first < kBlock ? count - first : kBlock;
    // Scores: 16 keys per register, one dimension pair per vdpbf16ps.
    for (int kb = 0; kb < key_blocks; ++kb) {
      __m512 acc[kBlock];
      for (int m = 0; m < block; ++m) acc[m] = _mm512_setzero_ps();
      const uint16_t* key_block = keys + static_cast<size_t>(kb) * (kHeadDim / 2) * 32;
      for (int pair = 0; pair < kHeadDim / 2; ++pair) {
        __m512bh k = (__m512bh)_mm512_loadu_si512(key_block + pair * 32);
        for (int m = 0; m < block; ++m) {
          acc[m] = _mm512_dpbf16_ps(acc[m], k, (__m512bh)_mm512_set1_epi32(query_pairs[first + m][pair]));
        }
      }
      for (int m = 0; m < block; ++m) _mm512_store_ps(scores[m] + kb * 16, _mm512_mul_ps(acc[m], _mm512_set1_ps(scale)));
    }
    // Softmax: keys past `length` (the chunk's padding) get probability 0.
    float maxima[kBlock], sums[kBlock];
    const int padded = key_blocks * 16;
    for (int m = 0; m < block; ++m) {
      float* s = scores[m];
      for (int j = length; j < padded; ++j) s[j] = -INFINITY;
      __m512 best = _mm512_set1_ps(-INFINITY);
      for (int j = 0; j < padded; j += 16) best = _mm512_max_ps(best, _mm512_load_ps(s + j));
      const float maximum = _mm512_reduce_max_ps(best);
      __m512 total = _mm512_setzero_ps();
      const __m512 shift = _mm512_set1_ps(maximum);
      for (int j = 0; j < padded; j += 32) {
        __m512 low = exp_nonpositive(_mm512_sub_ps(_mm512_load_ps(s + j), shift));
        __m512 high = j + 16 < padded ? exp_nonpositive(_mm512_sub_ps(_mm512_load_ps(s + j + 16), shift))
                                      : _mm512_setzero_ps();
        total = _mm512_add_ps(total, _mm512_add_ps(low, high));
        // cvtne2ps_pbh puts its second operand in the low half.
        _mm512_store_si512(probs[m] + j, (__m512i)_mm512_cvtne2ps_pbh(high, low));
      }
      maxima[m] = maximum;
      sums[m] = _mm512_reduce_add_ps(total);
    }
    // Values: 16 dimensions per register, one key pair per vdpbf16ps.
    __m512 acc[kBlock][kVectors];
    for (int m = 0; m < block; ++m)
      for (int d = 0; d < kVectors; ++d) acc[m][d] = _mm512_setzero_ps();
    for (int pair = 0; pair < key_pairs; ++pair) {
      const uint16_t* value_pair = values + static_cast<size_t>(pair) * kHeadDim * 2;
      __m512bh v[kVectors];
      for (int d = 0; d < kVectors; ++d) v[d] = (__m512bh)_mm512_loadu_si512(value_pair + d * 32);
      for (int m = 0; m < block; ++m) {
        uint32_t p;
        memcpy(&p, probs[m] + 2 * pair, sizeof p);
        const __m512bh pp = (__m512bh)_mm512_set1_epi32(static_cast<int>(p));
        for (int d = 0; d < kVectors; ++d) acc[m][d] = _mm512_dpbf16_ps(acc[m][d], v[d], pp);
      }
    }
    for (int m = 0; m < block; ++m) {
      const __m512 inverse = _mm512_set1_ps(1.0f / sums[m]);
      for (int d = 0; d < kVectors; ++d) _mm512_storeu_ps(outs[first + m] + d * 16, _mm512_mul_ps(acc[m][d], inverse));
      *lses[first + m] = maxima[m] + logf(sums[m]);
    }
  }
}

template <int HeadDim>
void level_attend(const uint16_t* keys, const uint16_t* values, const int32_t* chunk_length, int size, int kv_heads,
                  int groups, const uint16_t* query, float scale, int items, const int32_t* item_chunk,
                  const int32_t* item_start, const int32_t* item_rows, int rows, const int32_t* row_start,
                  const int32_t* row_entries, float* entry_out, float* entry_lse, float* out, float* lse,
                  int threads) {
  constexpr int head_dim = HeadDim;
  const size_t chunk_stride = static_cast<size_t>(kv_heads) * size * head_dim;
  const int vectors_per_entry = kv_heads * groups;
  // Phase 1: every (chunk, KV head), its rows' query vectors at once.
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (int work = 0; work < items * kv_heads; ++work) {
    const int item = work / kv_heads, head = work % kv_heads;
    const int chunk = item_chunk[item];
    const size_t offset = chunk * chunk_stride + static_cast<size_t>(head) * size * head_dim;
    // The chunk's rows in pieces of at most kPiece query vectors (all rows at once, in
    // practice: 128 rows of 3 groups is 384).
    constexpr int kPiece = 1024;
    const uint32_t* query_pairs[kPiece];
    float* outs[kPiece];
    float* lses[kPiece];
    const int rows_per_piece = kPiece / groups;
    for (int first = item_start[item]; first < item_start[item + 1]; first += rows_per_piece) {
      const int last = first + rows_per_piece < item_start[item + 1] ? first + rows_per_piece : item_start[item + 1];
      int v = 0;
      for (int entry = first; entry < last; ++entry) {
        const int row = item_rows[entry];
        for (int g = 0; g < groups; ++g, ++v) {
          const size_t vector = (static_cast<size_t>(row) * kv_heads + head) * groups + g;
          const size_t slot = (static_cast<size_t>(entry) * kv_heads + head) * groups + g;
          query_pairs[v] = reinterpret_cast<const uint32_t*>(query + vector * head_dim);
          outs[v] = entry_out + slot * head_dim;
          lses[v] = entry_lse + slot;
        }
      }
      attend_chunk<HeadDim>(keys + offset, values + offset, chunk_length[chunk], query_pairs, v, scale, outs, lses);
    }
  }
  // Phase 2: each row's entries merged by their log-sum-exps, in entry order.
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int row = 0; row < rows; ++row) {
    for (int vector = 0; vector < vectors_per_entry; ++vector) {
      float* target = out + (static_cast<size_t>(row) * vectors_per_entry + vector) * head_dim;
      float total = -INFINITY;
      for (int e = row_start[row]; e < row_start[row + 1]; ++e) {
        const float part = entry_lse[static_cast<size_t>(row_entries[e]) * vectors_per_entry + vector];
        total = log_add_exp(total, part);
      }
      for (int d = 0; d < head_dim; ++d) target[d] = 0.0f;
      lse[static_cast<size_t>(row) * vectors_per_entry + vector] = total;
      if (total == -INFINITY) continue;
      for (int e = row_start[row]; e < row_start[row + 1]; ++e) {
        const size_t slot = static_cast<size_t>(row_entries[e]) * vectors_per_entry + vector;
        const float weight = expf(entry_lse[slot] - total);
        const float* part = entry_out + slot * head_dim;
        for (int d = 0; d < head_dim; ++d) target[d] += weight * part[d];
      }
    }
  }
}

// Each row's attention over its own generated tokens (the first `length` of a
// `capacity`-key buffer per (row, KV head), in the keys/values layouts above), merged
// with its `parts` partial results (out [rows][kv_heads][groups][head_dim], lse
// [rows][kv_heads][groups], fp32; e.g. from corpus_level_attend) by log-sum-exp, and
// written as bf16 to `result` [rows][kv_heads * groups][head_dim].
template <int HeadDim>
void decode_finish(const uint16_t* keys, const uint16_t* values, int capacity, int length, int kv_heads, int groups,
                   const uint16_t* query, float scale, int rows, int parts, const float* const* part_out,
                   const float* const* part_lse, uint16_t* result, int threads) {
  constexpr int head_dim = HeadDim, kHeadDim = HeadDim, kVectors = HeadDim / 16;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int work = 0; work < rows * kv_heads; ++work) {
    const size_t base = static_cast<size_t>(work) * groups;  // (row, head)'s first query vector
    alignas(64) float own_out[kMaxGroups][kHeadDim];
    float own_lse[kMaxGroups];
    const uint32_t* query_pairs[kMaxGroups];
    float* outs[kMaxGroups];
    float* lses[kMaxGroups];
    for (int g = 0; g < groups; ++g) {
      query_pairs[g] = reinterpret_cast<const uint32_t*>(query + (base + g) * head_dim);
      outs[g] = own_out[g];
      lses[g] = own_lse + g;
    }
    const size_t offset = static_cast<size_t>(work) * capacity * head_dim;
    attend_chunk<HeadDim>(keys + offset, values + offset, length < kMaxSize ? length : kMaxSize, query_pairs, groups,
                          scale, outs, lses);
    // Past kMaxSize tokens: the further pieces, merged into the first as they come.
    for (int start = kMaxSize; start < length; start += kMaxSize) {
      alignas(64) float piece_out[kMaxGroups][kHeadDim];
      float piece_lse[kMaxGroups];
      for (int g = 0; g < groups; ++g) {
        outs[g] = piece_out[g];
        lses[g] = piece_lse + g;
      }
      // Both layouts hold `start` keys (a multiple of 16) in start * head_dim entries.
      const size_t piece = offset + static_cast<size_t>(start) * head_dim;
      const int count = length - start < kMaxSize ? length - start : kMaxSize;
      attend_chunk<HeadDim>(keys + piece, values + piece, count, query_pairs, groups, scale, outs, lses);
      for (int g = 0; g < groups; ++g) {
        const float total = log_add_exp(own_lse[g], piece_lse[g]);
        const float a = expf(own_lse[g] - total), b = expf(piece_lse[g] - total);
        for (int d = 0; d < kHeadDim; ++d) own_out[g][d] = a * own_out[g][d] + b * piece_out[g][d];
        own_lse[g] = total;
      }
    }
    for (int g = 0; g < groups; ++g) {
      const size_t vector = base + g;
      float total = own_lse[g];
      for (int p = 0; p < parts; ++p) {
        total = log_add_exp(total, part_lse[p][vector]);
      }
      __m512 sum[kVectors];
      const __m512 own_weight = _mm512_set1_ps(expf(own_lse[g] - total));
      for (int d = 0; d < kVectors; ++d) sum[d] = _mm512_mul_ps(own_weight, _mm512_load_ps(own_out[g] + 16 * d));
      for (int p = 0; p < parts; ++p) {
        const float lse = part_lse[p][vector];
        if (lse == -INFINITY) continue;
        const __m512 weight = _mm512_set1_ps(expf(lse - total));
        const float* out = part_out[p] + vector * head_dim;
        for (int d = 0; d < kVectors; ++d) sum[d] = _mm512_fmadd_ps(weight, _mm512_loadu_ps(out + 16 * d), sum[d]);
      }
      uint16_t* target = result + vector * head_dim;
      for (int d = 0; d < kVectors; ++d)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(target + 16 * d), (__m256i)_mm512_cvtneps_pbh(sum[d]));
    }
  }
}

}  // namespace

extern "C" {

// Both entry points return 0, or a positive code for arguments they do not take.
int corpus_level_attend(const uint16_t* keys, const uint16_t* values, const int32_t* chunk_length, int size,
                        int kv_heads, int groups, int head_dim, const uint16_t* query, float scale, int items,
                        const int32_t* item_chunk, const int32_t* item_start, const int32_t* item_rows, int rows,
                        const int32_t* row_start, const int32_t* row_entries, float* entry_out, float* entry_lse,
                        float* out, float* lse, int threads) {
  if (size % 16 || size > kMaxSize) return 2;
  if (groups < 1 || groups > 1024) return 3;
  switch (head_dim) {
    case 64:
      level_attend<64>(keys, values, chunk_length, size, kv_heads, groups, query, scale, items, item_chunk, item_start,
                       item_rows, rows, row_start, row_entries, entry_out, entry_lse, out, lse, threads);
      return 0;
    case 128:
      level_attend<128>(keys, values, chunk_length, size, kv_heads, groups, query, scale, items, item_chunk,
                        item_start, item_rows, rows, row_start, row_entries, entry_out, entry_lse, out, lse, threads);
      return 0;
    default:
      return 1;
  }
}

// Each row's attention over its own generated tokens, merged with its other parts
// (see decode_finish).
int corpus_decode_finish(const uint16_t* keys, const uint16_t* values, int capacity, int length, int kv_heads,
                         int groups, int head_dim, const uint16_t* query, float scale, int rows, int parts,
                         const float* const* part_out, const float* const* part_lse, uint16_t* result,
                         int threads) {
  if (capacity % 16 || length < 1 || length > capacity) return 2;
  if (groups < 1 || groups > kMaxGroups) return 3;
  switch (head_dim) {
    case 64:
      decode_finish<64>(keys, values, capacity, length, kv_heads, groups, query, scale, rows, parts, part_out,
                        part_lse, result, threads);
      return 0;
    case 128:
      decode_finish<128>(keys, values, capacity, length, kv_heads, groups, query, scale, rows, parts, part_out,
                         part_lse, result, threads);
      return 0;
    default:
      return 1;
  }
}

// Causal softmax in place over bf16 score rows, for the prefill's query blocks:
// `heads` x `block_rows` rows of `columns` scores (row stride `columns`); row r of a
// head sees its first `first_visible + r / groups` columns (the prefix and the block's
// keys up to its own position), the rest become 0. fp32 inside, rounded to bf16 once.
int corpus_causal_softmax(uint16_t* scores, int heads, int block_rows, int columns, int groups, int first_visible,
                          int threads) {
  if (groups < 1 || first_visible < 1) return 1;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int row = 0; row < heads * block_rows; ++row) {
    uint16_t* s = scores + static_cast<size_t>(row) * columns;
    int visible = first_visible + (row % block_rows) / groups;
    if (visible > columns) visible = columns;
    const int full = visible / 16 * 16;
    const __mmask16 tail = static_cast<__mmask16>((1u << (visible - full)) - 1);
    // bf16 -> fp32 is a 16-bit shift.
    auto load = [&](int j, __mmask16 mask) {
      __m256i half = _mm256_maskz_loadu_epi16(mask, s + j);
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
    };
    __m512 best = _mm512_set1_ps(-INFINITY);
    for (int j = 0; j < full; j += 16) best = _mm512_max_ps(best, load(j, 0xFFFF));
    if (tail) best = _mm512_mask_max_ps(best, tail, best, load(full, tail));
    const __m512 shift = _mm512_set1_ps(_mm512_reduce_max_ps(best));
    // The exponentials wait in fp32 (one per score, in this thread's buffer) for the sum.
    static thread_local std::vector<float> exps;
    if (exps.size() < static_cast<size_t>(full + 16)) exps.resize(full + 16);
    float* e = exps.data();
    __m512 total = _mm512_setzero_ps();
    for (int j = 0; j < full; j += 16) {
      __m512 x = exp_nonpositive(_mm512_sub_ps(load(j, 0xFFFF), shift));
      _mm512_storeu_ps(e + j, x);
      total = _mm512_add_ps(total, x);
    }
    if (tail) {
      __m512 x = _mm512_maskz_mov_ps(tail, exp_nonpositive(_mm512_sub_ps(load(full, tail), shift)));
      _mm512_storeu_ps(e + full, x);
      total = _mm512_add_ps(total, x);
    }
    const __m512 inverse = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(total));
    for (int j = 0; j < full; j += 16) {
      __m512 p = _mm512_mul_ps(_mm512_loadu_ps(e + j), inverse);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(s + j), (__m256i)_mm512_cvtneps_pbh(p));
    }
    if (tail) {
      __m512 p = _mm512_mul_ps(_mm512_loadu_ps(e + full), inverse);
      _mm256_mask_storeu_epi16(s + full, tail, (__m256i)_mm512_cvtneps_pbh(p));
    }
    if (visible < columns) memset(s + visible, 0, static_cast<size_t>(columns - visible) * sizeof(uint16_t));
  }
  return 0;
}

}  // extern "C"
