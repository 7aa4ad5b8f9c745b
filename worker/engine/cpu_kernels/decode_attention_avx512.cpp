// The AVX-512 body of paged decode attention (decode_attention.cpp holds the contract, its
// checks and the decode step around it): 16 float32 lanes a register, 32 registers.
#include "aten_slice.h"
#include <immintrin.h>
#include "decode_attention.h"
#include "vector_math.h"
#include "block_read_order.h"
#include <algorithm>
#include <cmath>
#include <vector>

namespace {

constexpr int64_t kMaxChunks = kMaxHeadDim / kLanes;

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
void decode_kernel(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const int64_t* tables, int64_t table_width, const int64_t* starts, const int64_t* ends,
                   float scale, at::Tensor& out) {
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

}  // namespace

#include "decode_attention_variants.h"
