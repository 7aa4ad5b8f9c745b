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
// them from the same memory. Two passes per sequence, each over its blocks with all KV heads of a
// block together: scores and softmax, then the weighted sum of values.
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
#include "block_read_order.h"
#include <algorithm>
#include <cmath>
#include <vector>

namespace {

constexpr int64_t kMaxChunks = 16;  // head_dim <= 256
constexpr int64_t kMaxGroup = 16;

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
  // k and v share one contiguous layout (checked by the caller): [N, H, S, D]
  const int64_t block_stride = k.stride(0), head_stride = k.stride(1), row_stride = k.stride(2);
  const int64_t per_head = G * chunks;  // registers of one KV head's queries (or sums)
  // Split the heads only when sequences are too few for two items a thread (one long context).
  const int64_t wanted = std::min<int64_t>(H, (2 * at::get_num_threads() + B - 1) / B);
  const int64_t heads_per_part = (H + wanted - 1) / wanted;
  const int64_t parts = (H + heads_per_part - 1) / heads_per_part;  // none of them empty
  at::parallel_for(0, B * parts, 1, [&](int64_t begin, int64_t end) {
    const ReadOrder<T> order{kp, vp, block_stride, head_stride, S, tables, table_width, starts, ends,
                             parts, heads_per_part, H, end};
    std::vector<float> scores;  // [H][G][padded]: scores, then softmax weights in place
    std::vector<__m512> queries(H * per_head), sums(H * per_head);
    std::vector<float> inverse(H * G);
    __m512 query[kMaxGroup * kMaxChunks];
    __m512 acc[kMaxGroup * kMaxChunks];
    __m512 tile[kMaxGroup * kLanes];  // [query head][row % 16]: partial dot products awaiting their sums
    for (int64_t i = 0; i < kBlocksAhead; ++i) {  // the first blocks, which no earlier read fetches
      if (const T* block = order.block_after(begin, false, 0, i)) prefetch_range(block, order.item_span(begin));
    }
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = order.sequence(item), h0 = order.first_head(item), h1 = order.end_head(item);
      const int64_t padded = (ends[b] - starts[b] + kLanes - 1) / kLanes * kLanes;
      scores.assign(H * G * padded, -INFINITY);
      const T* qbase = qp + b * H * G * D;
      for (int64_t i = h0 * per_head; i < h1 * per_head; ++i)
        queries[i] = _mm512_mul_ps(load16(qbase + i * kLanes), _mm512_set1_ps(scale));
      // Scores: each key row once, the item's heads of a block together.
      order.for_each_block_head(item, false, [&](int64_t h, const T* rows, const T* ahead, int64_t position,
                                                 int64_t r0, int64_t r1) {
        for (int64_t j = 0; j < per_head; ++j) query[j] = queries[h * per_head + j];
        // Each key row leaves one vector of partial dot products per query head; every 16 rows
        // a tile of them is summed at once into 16 scores. Against one reduction per row:
        // 17.5 -> 14.3 ms a step in bfloat16 on bench-135m's shapes.
        for (int64_t r = r0; r < r1; r += kLanes) {
          const int64_t n = std::min<int64_t>(kLanes, r1 - r);
          for (int64_t row = 0; row < n; ++row) {
            const int64_t offset = (r + row) * row_stride;
            if (ahead) prefetch_range(ahead + offset, D);
            __m512* dots = tile + row;
            for (int64_t g = 0; g < G; ++g) dots[g * kLanes] = _mm512_setzero_ps();
            for (int64_t c = 0; c < chunks; ++c) {
              __m512 key = load16(rows + offset + c * kLanes);
              for (int64_t g = 0; g < G; ++g) dots[g * kLanes] = _mm512_fmadd_ps(query[g * chunks + c], key, dots[g * kLanes]);
            }
          }
          for (int64_t g = 0; g < G; ++g) {
            for (int64_t row = n; row < kLanes; ++row) tile[g * kLanes + row] = _mm512_setzero_ps();
            _mm512_mask_storeu_ps(scores.data() + (h * G + g) * padded + position + r, lanes(n),
                                  sum16x16(tile + g * kLanes));
          }
        }
      });
      for (int64_t hg = h0 * G; hg < h1 * G; ++hg) {  // softmax over each query head's scores
        float* s = scores.data() + hg * padded;
        __m512 peak = _mm512_set1_ps(-INFINITY);
        for (int64_t t = 0; t < padded; t += kLanes) peak = _mm512_max_ps(peak, _mm512_loadu_ps(s + t));
        __m512 top = _mm512_set1_ps(_mm512_reduce_max_ps(peak));
        __m512 total = _mm512_setzero_ps();
        for (int64_t t = 0; t < padded; t += kLanes) {
          __m512 e = exp16_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(s + t), top));
          _mm512_storeu_ps(s + t, e);
          total = _mm512_add_ps(total, e);
        }
        inverse[hg] = 1.f / _mm512_reduce_add_ps(total);
      }
      for (int64_t i = h0 * per_head; i < h1 * per_head; ++i) sums[i] = _mm512_setzero_ps();
      // The weighted sum of values, block by block.
      order.for_each_block_head(item, true, [&](int64_t h, const T* rows, const T* ahead, int64_t position,
                                                int64_t r0, int64_t r1) {
        for (int64_t j = 0; j < per_head; ++j) acc[j] = sums[h * per_head + j];
        const float* weight = scores.data() + h * G * padded + position;
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t offset = r * row_stride;
          if (ahead) prefetch_range(ahead + offset, D);
          __m512 weights[kMaxGroup];  // broadcast once per row, not once per chunk
          for (int64_t g = 0; g < G; ++g) weights[g] = _mm512_set1_ps(weight[g * padded + r]);
          for (int64_t c = 0; c < chunks; ++c) {
            __m512 value = load16(rows + offset + c * kLanes);
            for (int64_t g = 0; g < G; ++g) acc[g * chunks + c] = _mm512_fmadd_ps(weights[g], value, acc[g * chunks + c]);
          }
        }
        for (int64_t j = 0; j < per_head; ++j) sums[h * per_head + j] = acc[j];
      });
      T* obase = op + b * H * G * D;
      for (int64_t hg = h0 * G; hg < h1 * G; ++hg)
        for (int64_t c = 0; c < chunks; ++c)
          store16(obase + hg * D + c * kLanes, _mm512_mul_ps(sums[hg * chunks + c], _mm512_set1_ps(inverse[hg])));
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
