// Decode attention on the CPU, read in place from the paged KV cache: every decoding sequence's
// one query token (its query heads that share a KV head packed as G rows) against the keys and
// values in that sequence's blocks.
//
// Why a kernel: torch's SDPA on the CPU handles these tiny per-sequence problems ([G x D] against
// [T x D]) as small GEMMs, needs the context contiguous (a gather or a copy of every context, every
// step), and for bfloat16 converts through intermediate buffers. Decode attention is a streaming
// read of K and V, so this follows the block table, reads each key and value row once where it
// lies, converts bfloat16 to float32 in registers, and accumulates in float32 (the same precision
// SDPA's CPU kernel uses). Blocks shared by several sequences (a common prefix) are read by each of
// them from the same memory. Two passes per (sequence, KV head): scores and softmax, then the
// weighted sum of values.
//
// Contract (checked in paged_decode_attention below and in Python before the call):
//   q             [B, H, G, D]  float32 or bfloat16, D a multiple of 16 and <= 256, G <= 16
//   k, v caches   [N, H, S, D]  same dtype, contiguous (kv_cache.py's layout: S tokens a block)
//   block_tables  [B, W] int64: sequence b's position t is in block block_tables[b][t / S], row t % S
//   starts, ends  [B] int64: sequence b attends to positions [starts[b], ends[b]), non-empty,
//                 ends[b] <= W * S, and every block it reads is in [0, N)
//   returns [B, H, G, D] in q's dtype.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include "vector_math.h"
#include <algorithm>
#include <cmath>
#include <vector>

namespace {

constexpr int64_t kMaxChunks = 16;  // head_dim <= 256
constexpr int64_t kMaxGroup = 16;
// Software prefetch. A (sequence, head) is short contiguous runs (one block each) with jumps
// between them, which the hardware prefetcher follows too late: while reading row i of a block,
// fetch row i of the block `blocks_ahead` further on. Measured on the 135M model's shapes (reading
// contiguous rows, 4 KB ahead), fp32 decode attention went from 8 to 15 GB/s (2 threads).
// bfloat16 rows are half as long, so one block ahead hid too little of the memory's latency; its
// plan fetches 8 KB ahead, starts on a sequence's first blocks at once, fetches the values during
// the key pass (they are read right after it) and, during the value pass, the next (sequence,
// head)'s first blocks. Measured (bench-135m shapes, 32 sequences of 320 tokens, 30 layers' caches,
// blocks scattered, 2 threads, variants interleaved in one process): 10.4-11.7 -> 8.4-8.8 ms a
// step, and with each sequence's blocks in order 9.4-9.6 -> 7.5-7.6 ms. In float32 the same plan
// was 6% faster with scattered blocks but 12% slower with ordered ones, so float32 keeps one block.
template <typename T>
struct PrefetchPlan {
  static constexpr int64_t kBytesAhead = 0;  // one block
  static constexpr bool kEager = false;
};
template <>
struct PrefetchPlan<c10::BFloat16> {
  static constexpr int64_t kBytesAhead = 8192;
  static constexpr bool kEager = true;
};

template <typename T>
inline int64_t blocks_ahead(int64_t block_size, int64_t head_dim) {
  const int64_t block_bytes = block_size * head_dim * static_cast<int64_t>(sizeof(T));
  return std::max<int64_t>(1, PrefetchPlan<T>::kBytesAhead / block_bytes);
}

template <typename T>
inline void prefetch_row(const T* row, int64_t head_dim) {
  const char* bytes = reinterpret_cast<const char*>(row);
  for (int64_t line = 0; line < head_dim * static_cast<int64_t>(sizeof(T)); line += 64)
    _mm_prefetch(bytes + line, _MM_HINT_T0);
}

// One head's rows of the blocks table[from] .. table[to - 1].
template <typename T>
inline void prefetch_blocks(const T* cache, int64_t block_stride, int64_t head_offset, int64_t row_stride,
                            int64_t block_size, const int64_t* table, int64_t from, int64_t to, int64_t head_dim) {
  for (int64_t slot = from; slot < to; ++slot)
    for (int64_t i = 0; i < block_size; ++i)
      prefetch_row(cache + table[slot] * block_stride + head_offset + i * row_stride, head_dim);
}

// Walks one sequence's positions [first, end) block by block: calls visit(t, row) for every
// position in order, row pointing at its head_dim values, and prefetches ahead (PrefetchPlan).
// `also` (or nullptr): a second cache of the same layout to be read next at the same positions
// (the values, during the key pass), prefetched alongside under an eager plan.
template <typename T, typename Visit>
inline void for_each_row(const T* cache, const T* also, int64_t block_stride, int64_t head_offset,
                         int64_t row_stride, int64_t block_size, const int64_t* table, int64_t first, int64_t end,
                         int64_t head_dim, Visit visit) {
  constexpr bool eager = PrefetchPlan<T>::kEager;
  const int64_t distance = blocks_ahead<T>(block_size, head_dim);
  const int64_t first_slot = first / block_size, last_slot = (end - 1) / block_size;
  if (eager) {  // the blocks before the first one the loop below fetches
    const int64_t to = std::min(first_slot + distance, last_slot + 1);
    prefetch_blocks(cache, block_stride, head_offset, row_stride, block_size, table, first_slot + 1, to, head_dim);
    if (also) prefetch_blocks(also, block_stride, head_offset, row_stride, block_size, table, first_slot, to, head_dim);
  }
  for (int64_t t = first; t < end;) {
    const int64_t slot = t / block_size, offset = t % block_size;
    const int64_t count = std::min(block_size - offset, end - t);
    const T* row = cache + table[slot] * block_stride + head_offset + offset * row_stride;
    const bool more = slot + distance <= last_slot;
    const int64_t ahead = more ? table[slot + distance] * block_stride + head_offset : 0;  // its row 0
    for (int64_t i = 0; i < count; ++i, ++t, row += row_stride) {
      if (more) {
        prefetch_row(cache + ahead + i * row_stride, head_dim);
        if (eager && also) prefetch_row(also + ahead + i * row_stride, head_dim);
      }
      visit(t - first, row);
    }
  }
}

inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const c10::BFloat16* p) {
  __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}
inline void store16(float* p, __m512 x) { _mm512_storeu_ps(p, x); }
inline void store16(c10::BFloat16* p, __m512 x) {
  __m256i halves = _mm512_cvtepi32_epi16(_mm512_srli_epi32(bf16_rounded_bits(x), 16));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), halves);
}


// Lane i of the result is the sum of v[i]'s 16 lanes: a transpose-and-add tree of 45 shuffles
// and adds for 16 key rows, where one horizontal reduction per row costs about 8 each.
inline __m512 sum16x16(const __m512* v) {
  __m512 pairs[8], quads[4];
  for (int i = 0; i < 8; ++i)  // per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3]
    pairs[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int j = 0; j < 4; ++j) {  // per 128-bit lane: that lane's sums of rows 4j .. 4j+3
    __m512d a = _mm512_castps_pd(pairs[2 * j]), b = _mm512_castps_pd(pairs[2 * j + 1]);
    quads[j] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  // Add the four 128-bit lanes of each quad, leaving quad j's four sums in lane j.
  __m512 low = _mm512_add_ps(_mm512_shuffle_f32x4(quads[0], quads[1], 0x44), _mm512_shuffle_f32x4(quads[0], quads[1], 0xEE));
  __m512 high = _mm512_add_ps(_mm512_shuffle_f32x4(quads[2], quads[3], 0x44), _mm512_shuffle_f32x4(quads[2], quads[3], 0xEE));
  return _mm512_add_ps(_mm512_shuffle_f32x4(low, high, 0x88), _mm512_shuffle_f32x4(low, high, 0xDD));
}

// kG, kChunks: the query heads per KV head and head_dim / 16 when known at compile time (0: read
// from q). Known, the compiler keeps the accumulators in registers instead of memory; measured on
// bench-135m's shapes (G = 3, head_dim 64, 32 sequences of 320 tokens, 2 threads) that took the
// kernel from 13.9 to 11.0 ms a step in bfloat16 and from 17.8 to 14.5 ms in float32.
template <typename T, int kG = 0, int kChunks = 0>
void decode_kernel(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                   const int64_t* tables, int64_t table_width, const int64_t* starts, const int64_t* ends,
                   float scale, torch::Tensor& out) {
  const int64_t B = q.size(0), H = q.size(1), D = q.size(3);
  const int64_t G = kG ? kG : q.size(2), chunks = kChunks ? kChunks : D / kLanes;
  const int64_t S = k.size(2);
  const T* qp = q.data_ptr<T>();
  const T* kp = k.data_ptr<T>();
  const T* vp = v.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const int64_t ks0 = k.stride(0), ks1 = k.stride(1), ks2 = k.stride(2);
  const int64_t vs0 = v.stride(0), vs1 = v.stride(1), vs2 = v.stride(2);
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    __m512 query[kMaxGroup * kMaxChunks];
    __m512 acc[kMaxGroup * kMaxChunks];
    __m512 tile[kMaxGroup * kLanes];  // [head][row % 16]: partial dot products awaiting their sums
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / H, h = item % H;
      const int64_t first = starts[b], len = ends[b] - first;
      const int64_t padded = (len + kLanes - 1) / kLanes * kLanes;
      const int64_t* table = tables + b * table_width;
      scores.assign(G * padded, -INFINITY);
      float* score = scores.data();
      const T* qbase = qp + (b * H + h) * G * D;
      for (int64_t i = 0; i < G * chunks; ++i) query[i] = _mm512_mul_ps(load16(qbase + i * kLanes), _mm512_set1_ps(scale));
      // Each key row leaves one vector of partial dot products per query head; every 16 rows
      // (and at the end) a tile of them is summed at once into 16 scores. Against one reduction
      // per row: 17.5 -> 14.3 ms a step in bfloat16 on the shapes measured below.
      for_each_row(kp, vp, ks0, h * ks1, ks2, S, table, first, ends[b], D, [&](int64_t t, const T* key_row) {
        const int64_t slot = t % kLanes;
        __m512* dots = tile + slot;
        for (int64_t g = 0; g < G; ++g) dots[g * kLanes] = _mm512_setzero_ps();
        for (int64_t c = 0; c < chunks; ++c) {
          __m512 key = load16(key_row + c * kLanes);
          for (int64_t g = 0; g < G; ++g)
            dots[g * kLanes] = _mm512_fmadd_ps(query[g * chunks + c], key, dots[g * kLanes]);
        }
        if (slot == kLanes - 1 || t == len - 1) {
          const __mmask16 rows = static_cast<__mmask16>((1u << (slot + 1)) - 1);
          for (int64_t g = 0; g < G; ++g) {
            for (int64_t i = slot + 1; i < kLanes; ++i) tile[g * kLanes + i] = _mm512_setzero_ps();
            _mm512_mask_storeu_ps(score + g * padded + t - slot, rows, sum16x16(tile + g * kLanes));
          }
        }
      });
      if (PrefetchPlan<T>::kEager && item + 1 < end) {  // the next (sequence, head)'s first blocks
        const int64_t next_b = (item + 1) / H, next_h = (item + 1) % H;
        const int64_t from = starts[next_b] / S;
        const int64_t to = std::min(from + blocks_ahead<T>(S, D), (ends[next_b] - 1) / S + 1);
        prefetch_blocks(kp, ks0, next_h * ks1, ks2, S, tables + next_b * table_width, from, to, D);
        prefetch_blocks(vp, vs0, next_h * vs1, vs2, S, tables + next_b * table_width, from, to, D);
      }
      __m512 inverse[kMaxGroup];
      for (int64_t g = 0; g < G; ++g) {
        float* s = score + g * padded;
        __m512 peak = _mm512_set1_ps(-INFINITY);
        for (int64_t t = 0; t < padded; t += kLanes) peak = _mm512_max_ps(peak, _mm512_loadu_ps(s + t));
        __m512 top = _mm512_set1_ps(_mm512_reduce_max_ps(peak));
        __m512 total = _mm512_setzero_ps();
        for (int64_t t = 0; t < padded; t += kLanes) {
          __m512 e = exp16_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(s + t), top));
          _mm512_storeu_ps(s + t, e);
          total = _mm512_add_ps(total, e);
        }
        inverse[g] = _mm512_set1_ps(1.f / _mm512_reduce_add_ps(total));
      }
      for (int64_t i = 0; i < G * chunks; ++i) acc[i] = _mm512_setzero_ps();
      const T* no_second_cache = nullptr;
      for_each_row(vp, no_second_cache, vs0, h * vs1, vs2, S, table, first, ends[b], D,
                   [&](int64_t t, const T* value_row) {
        __m512 weights[kMaxGroup];  // broadcast once per row, not once per chunk
        for (int64_t g = 0; g < G; ++g) weights[g] = _mm512_set1_ps(score[g * padded + t]);
        for (int64_t c = 0; c < chunks; ++c) {
          __m512 value = load16(value_row + c * kLanes);
          for (int64_t g = 0; g < G; ++g)
            acc[g * chunks + c] = _mm512_fmadd_ps(weights[g], value, acc[g * chunks + c]);
        }
      });
      T* obase = op + (b * H + h) * G * D;
      for (int64_t g = 0; g < G; ++g)
        for (int64_t c = 0; c < chunks; ++c)
          store16(obase + (g * chunks + c) * kLanes, _mm512_mul_ps(acc[g * chunks + c], inverse[g]));
    }
  });
}

// Compiled variants for the common shapes: head_dim 64 or 128 with 1 to 8 query heads per KV
// head (Llama, Qwen, Mistral, SmolLM, ...); any other shape runs the general loops.
template <typename T, int kChunks, int kG = 1>
void with_group(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const int64_t* tables,
                int64_t width, const int64_t* starts, const int64_t* ends, float scale, torch::Tensor& out) {
  if constexpr (kG <= 8) {
    if (q.size(2) == kG) return decode_kernel<T, kG, kChunks>(q, k, v, tables, width, starts, ends, scale, out);
    return with_group<T, kChunks, kG + 1>(q, k, v, tables, width, starts, ends, scale, out);
  } else {
    decode_kernel<T, 0, kChunks>(q, k, v, tables, width, starts, ends, scale, out);
  }
}

template <typename T>
void dispatch(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const int64_t* tables,
              int64_t width, const int64_t* starts, const int64_t* ends, float scale, torch::Tensor& out) {
  switch (q.size(3) / kLanes) {
    case 4: return with_group<T, 4>(q, k, v, tables, width, starts, ends, scale, out);
    case 8: return with_group<T, 8>(q, k, v, tables, width, starts, ends, scale, out);
    default: return decode_kernel<T>(q, k, v, tables, width, starts, ends, scale, out);
  }
}

}  // namespace

torch::Tensor paged_decode_attention(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor block_tables,
                                     torch::Tensor starts, torch::Tensor ends, double scale) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "q and the k, v caches must be 4-d");
  TORCH_CHECK(q.device().is_cpu() && k.device().is_cpu() && v.device().is_cpu(), "cpu tensors only");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), "q, k, v dtypes differ");
  TORCH_CHECK(k.sizes() == v.sizes() && k.is_contiguous() && v.is_contiguous(),
              "the k and v caches must have one shape and be contiguous");
  TORCH_CHECK(k.size(1) == q.size(1) && k.size(3) == q.size(3), "q and the caches differ in heads or head_dim");
  TORCH_CHECK(q.size(3) % kLanes == 0 && q.size(3) <= kLanes * kMaxChunks && q.size(2) <= kMaxGroup,
              "head_dim must be a multiple of 16 up to 256, and at most 16 query heads per KV head");
  auto tables = block_tables.to(torch::kLong).contiguous();
  auto s = starts.to(torch::kLong).contiguous();
  auto e = ends.to(torch::kLong).contiguous();
  const int64_t B = q.size(0), block_size = k.size(2), num_blocks = k.size(0);
  TORCH_CHECK(tables.dim() == 2 && tables.size(0) == B, "one block table row per sequence");
  TORCH_CHECK(s.numel() == B && e.numel() == B, "one start and end per sequence");
  const int64_t width = tables.size(1);
  const int64_t* tp = tables.data_ptr<int64_t>();
  const int64_t* sp = s.data_ptr<int64_t>();
  const int64_t* ep = e.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(0 <= sp[b] && sp[b] < ep[b] && ep[b] <= width * block_size,
                "each range must be non-empty and inside its block table");
    for (int64_t slot = sp[b] / block_size; slot <= (ep[b] - 1) / block_size; ++slot)
      TORCH_CHECK(0 <= tp[b * width + slot] && tp[b * width + slot] < num_blocks, "a block id is outside the cache");
  }
  q = q.contiguous();
  auto out = torch::empty_like(q);
  if (q.scalar_type() == torch::kFloat) {
    dispatch<float>(q, k, v, tp, width, sp, ep, static_cast<float>(scale), out);
  } else if (q.scalar_type() == torch::kBFloat16) {
    dispatch<c10::BFloat16>(q, k, v, tp, width, sp, ep, static_cast<float>(scale), out);
  } else {
    TORCH_CHECK(false, "paged_decode_attention supports float32 and bfloat16");
  }
  return out;
}

// A decode-only step's attention for one layer, as transformers hands it over: write the new keys
// and values into the caches, then attend. One call instead of the dozen tensor operations (each a
// Python-level dispatch) it takes to do the same around paged_decode_attention.
//   query [1, heads, B, D], key and value [1, H, B, D] (any strides: transformers' transposed views)
//   write_rows [B * H] int64: the cache row (of k_cache viewed as [N * H * S, D]) of token b's head h
//       at b * H + h, as attention_metadata.write_rows builds them
//   the caches, block_tables, starts, ends and scale as paged_decode_attention takes them
//   returns [1, B, heads, D] contiguous, in query's dtype.
torch::Tensor paged_decode_step(torch::Tensor query, torch::Tensor key, torch::Tensor value, torch::Tensor k_cache,
                                torch::Tensor v_cache, torch::Tensor write_rows, torch::Tensor block_tables,
                                torch::Tensor starts, torch::Tensor ends, double scale) {
  TORCH_CHECK(query.dim() == 4 && key.dim() == 4 && value.dim() == 4 && query.size(0) == 1 && key.size(0) == 1 &&
                  key.sizes() == value.sizes() && key.size(2) == query.size(2) && key.size(3) == query.size(3),
              "query [1, heads, B, D] and key, value [1, kv_heads, B, D] expected");
  const int64_t heads = query.size(1), kv_heads = key.size(1), B = query.size(2), D = query.size(3);
  TORCH_CHECK(kv_heads > 0 && heads % kv_heads == 0, "the query heads must be a multiple of the KV heads");
  TORCH_CHECK(k_cache.dim() == 4 && k_cache.size(1) == kv_heads && k_cache.size(3) == D && k_cache.is_contiguous() &&
                  v_cache.sizes() == k_cache.sizes() && v_cache.is_contiguous(),
              "the k and v caches must be contiguous [N, kv_heads, S, D]");
  TORCH_CHECK(write_rows.dim() == 1 && write_rows.numel() == B * kv_heads, "one write row per token and KV head");
  const auto rows = write_rows.to(torch::kLong);  // index_copy_ refuses a row outside the cache
  const int64_t cache_rows = k_cache.numel() / D;
  k_cache.view({cache_rows, D}).index_copy_(0, rows, key.select(0, 0).transpose(0, 1).reshape({B * kv_heads, D}));
  v_cache.view({cache_rows, D}).index_copy_(0, rows, value.select(0, 0).transpose(0, 1).reshape({B * kv_heads, D}));
  torch::Tensor packed = query.select(0, 0).transpose(0, 1).reshape({B, kv_heads, heads / kv_heads, D});
  return paged_decode_attention(packed, k_cache, v_cache, block_tables, starts, ends, scale).view({1, B, heads, D});
}
