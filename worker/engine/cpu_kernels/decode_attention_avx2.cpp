// The AVX2 body of paged decode attention (decode_attention.cpp holds the contract, its checks and
// the decode step around it), for CPUs without AVX-512. The AVX-512 file's plan with 8 lanes a
// register: items of a sequence's KV heads in block_read_order.h's order and prefetch, scores
// summed 8 key rows at a time (sum8x8), a float32 softmax, then the weighted sum of values.
//
// With 16 registers, not 32, the weighted sum does not keep all of a KV head's accumulators (G
// query heads x head_dim / 8) in registers: it runs over the head's dimensions in slices of at most
// kSliceRegisters accumulators, each slice reading the block's value rows (from L1 after the first).
//
// Measured in the engine on bench-135m (AMD EPYC without AVX-512, float32, 2 threads, engines with
// and without the kernels stepping alternately in one process): decode step 300.3 -> 237.1 and
// 242.4 -> 199.7 ms (medians of 40 steps, two runs), the same greedy tokens.
#include "aten_slice.h"
#include <immintrin.h>
#include "decode_attention.h"
#include "vector_math_avx2.h"
#include "block_read_order.h"
#include <algorithm>
#include <cmath>
#include <vector>

namespace {

constexpr int64_t kMaxChunks = kMaxHeadDim / kLanes;
constexpr int64_t kSliceRegisters = 12;  // accumulators of one slice; the rest hold weights and a value

// kG, kChunks: query heads per KV head and head_dim / 8 when known at compile time (0: read from q),
// so that the compiler unrolls the loops over them and keeps accumulators in registers.
template <typename T, int kG = 0, int kChunks = 0>
void decode_kernel(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const int64_t* tables, int64_t table_width, const int64_t* starts, const int64_t* ends,
                   float scale, at::Tensor& out) {
  const int64_t B = q.size(0), H = q.size(1), D = q.size(3);
  const int64_t G = kG ? kG : q.size(2), chunks = kChunks ? kChunks : D / kLanes;
  const int64_t S = k.size(2);
  const int64_t slice = std::max<int64_t>(1, std::min<int64_t>(chunks, kSliceRegisters / G));
  const T* qp = q.data_ptr<T>();
  const T* kp = k.data_ptr<T>();
  const T* vp = v.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const int64_t block_stride = k.stride(0), head_stride = k.stride(1), row_stride = k.stride(2);
  const int64_t per_head = G * chunks;
  const int64_t wanted = std::min<int64_t>(H, (2 * at::get_num_threads() + B - 1) / B);
  const int64_t heads_per_part = (H + wanted - 1) / wanted;
  const int64_t parts = (H + heads_per_part - 1) / heads_per_part;
  at::parallel_for(0, B * parts, 1, [&](int64_t begin, int64_t end) {
    const ReadOrder<T> order{kp, vp, block_stride, head_stride, S, tables, table_width, starts, ends,
                             parts, heads_per_part, H, end};
    std::vector<float> scores;  // [H][G][padded]: scores, then softmax weights in place
    std::vector<__m256> queries(H * per_head), sums(H * per_head);
    std::vector<float> inverse(H * G);
    __m256 tile[kMaxGroup * kLanes];  // [query head][row % 8]: partial dot products awaiting their sums
    for (int64_t i = 0; i < kBlocksAhead; ++i) {
      if (const T* block = order.block_after(begin, false, 0, i)) prefetch_range(block, order.item_span(begin));
    }
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = order.sequence(item), h0 = order.first_head(item), h1 = order.end_head(item);
      const int64_t padded = (ends[b] - starts[b] + kLanes - 1) / kLanes * kLanes;
      scores.assign(H * G * padded, -INFINITY);
      const T* qbase = qp + b * H * G * D;
      for (int64_t i = h0 * per_head; i < h1 * per_head; ++i)
        queries[i] = _mm256_mul_ps(load8(qbase + i * kLanes), _mm256_set1_ps(scale));
      order.for_each_block_head(item, false, [&](int64_t h, const T* rows, const T* ahead, int64_t position,
                                                 int64_t r0, int64_t r1) {
        const __m256* query = queries.data() + h * per_head;
        for (int64_t r = r0; r < r1; r += kLanes) {
          const int64_t n = std::min<int64_t>(kLanes, r1 - r);
          for (int64_t row = 0; row < n; ++row) {
            const int64_t offset = (r + row) * row_stride;
            if (ahead) prefetch_range(ahead + offset, D);
            __m256 dots[kMaxGroup];
            for (int64_t g = 0; g < G; ++g) dots[g] = _mm256_setzero_ps();
            for (int64_t c = 0; c < chunks; ++c) {
              __m256 key = load8(rows + offset + c * kLanes);
              for (int64_t g = 0; g < G; ++g) dots[g] = _mm256_fmadd_ps(query[g * chunks + c], key, dots[g]);
            }
            for (int64_t g = 0; g < G; ++g) tile[g * kLanes + row] = dots[g];
          }
          for (int64_t g = 0; g < G; ++g) {
            for (int64_t row = n; row < kLanes; ++row) tile[g * kLanes + row] = _mm256_setzero_ps();
            store_lanes(scores.data() + (h * G + g) * padded + position + r, sum8x8(tile + g * kLanes), lanes(n));
          }
        }
      });
      for (int64_t hg = h0 * G; hg < h1 * G; ++hg) {  // softmax over each query head's scores
        float* s = scores.data() + hg * padded;
        __m256 peak = _mm256_set1_ps(-INFINITY);
        for (int64_t t = 0; t < padded; t += kLanes) peak = _mm256_max_ps(peak, _mm256_loadu_ps(s + t));
        __m256 top = _mm256_set1_ps(reduce_max8(peak));
        __m256 total = _mm256_setzero_ps();
        for (int64_t t = 0; t < padded; t += kLanes) {
          __m256 e = exp8_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(s + t), top));
          _mm256_storeu_ps(s + t, e);
          total = _mm256_add_ps(total, e);
        }
        inverse[hg] = 1.f / reduce_add8(total);
      }
      for (int64_t i = h0 * per_head; i < h1 * per_head; ++i) sums[i] = _mm256_setzero_ps();
      order.for_each_block_head(item, true, [&](int64_t h, const T* rows, const T* ahead, int64_t position,
                                                int64_t r0, int64_t r1) {
        const float* weight = scores.data() + h * G * padded + position;
        __m256* sum = sums.data() + h * per_head;
        for (int64_t c0 = 0; c0 < chunks; c0 += slice) {
          const int64_t width = std::min<int64_t>(slice, chunks - c0);
          __m256 acc[kMaxGroup];  // G x width <= 12, or G x 1 when G > 12
          for (int64_t g = 0; g < G; ++g)
            for (int64_t c = 0; c < width; ++c) acc[g * slice + c] = sum[g * chunks + c0 + c];
          for (int64_t r = r0; r < r1; ++r) {
            const int64_t offset = r * row_stride;
            if (ahead && c0 == 0) prefetch_range(ahead + offset, D);
            __m256 weights[kMaxGroup];
            for (int64_t g = 0; g < G; ++g) weights[g] = _mm256_set1_ps(weight[g * padded + r]);
            for (int64_t c = 0; c < width; ++c) {
              __m256 value = load8(rows + offset + (c0 + c) * kLanes);
              for (int64_t g = 0; g < G; ++g) acc[g * slice + c] = _mm256_fmadd_ps(weights[g], value, acc[g * slice + c]);
            }
          }
          for (int64_t g = 0; g < G; ++g)
            for (int64_t c = 0; c < width; ++c) sum[g * chunks + c0 + c] = acc[g * slice + c];
        }
      });
      T* obase = op + b * H * G * D;
      for (int64_t hg = h0 * G; hg < h1 * G; ++hg)
        for (int64_t c = 0; c < chunks; ++c)
          store8(obase + hg * D + c * kLanes, _mm256_mul_ps(sums[hg * chunks + c], _mm256_set1_ps(inverse[hg])));
    }
  });
}

}  // namespace

#include "decode_attention_variants.h"
