// The softmax of a bfloat16 prefill tile's attention scores, causal mask included, in place.
//
// Why: prefill attention in bfloat16 (prefill_attention.py) multiplies on the matrix units, and
// between its two matmuls torch needs five passes over the scores: a float32 copy, the scale, the
// causal mask, the softmax, a bfloat16 copy. Here each row is read once and written once.
// Measured on bench-135m's shapes (8 prompts of 256 tokens, 30 layers, 2 threads): see
// prefill_attention.py.
//
// Precision: as the torch sequence computes it. Each score is widened to float32 and scaled there,
// the maximum is subtracted before exp, the sum is float32, and each probability is rounded to
// bfloat16 once. exp is vector_math.h's (relative error ~1e-7 against torch's ~1 ulp), so a
// probability may differ from torch's in its last bfloat16 bit.
//
//   causal_softmax_(scores, scale):
//     scores [N, rows, context] bfloat16, contiguous: row i of each tile is the query at context
//         position context - rows + i, which may attend to keys 0 .. context - rows + i
//     overwrites each row with softmax(scale * row) over its allowed keys and 0 beyond them.
#include "aten_slice.h"
#include <immintrin.h>
#include "vector_math.h"
#include <algorithm>
#include <vector>

namespace {

// One row: its first `allowed` entries become probabilities, the rest of its `context` zeros. The
// unnormalised exps wait in `held` (room for `allowed` rounded up to 16) rather than being computed twice.
void softmax_row(c10::BFloat16* row, int64_t allowed, int64_t context, __m512 scale, float* held) {
  __m512 peak = _mm512_set1_ps(-INFINITY);
  for (int64_t j = 0; j < allowed; j += kLanes) {
    const __mmask16 mask = lanes(allowed - j);
    peak = _mm512_mask_max_ps(peak, mask, peak, _mm512_mul_ps(load_lanes(row + j, mask), scale));
  }
  const __m512 top = _mm512_set1_ps(_mm512_reduce_max_ps(peak));
  __m512 total = _mm512_setzero_ps();
  for (int64_t j = 0; j < allowed; j += kLanes) {
    const __mmask16 mask = lanes(allowed - j);
    const __m512 scaled = _mm512_mul_ps(load_lanes(row + j, mask), scale);
    __m512 e = _mm512_maskz_mov_ps(mask, exp16_nonpositive(_mm512_sub_ps(scaled, top)));
    _mm512_storeu_ps(held + j, e);
    total = _mm512_add_ps(total, e);
  }
  const __m512 inverse = _mm512_set1_ps(1.f / _mm512_reduce_add_ps(total));
  for (int64_t j = 0; j < allowed; j += kLanes) {
    store_lanes(row + j, _mm512_mul_ps(_mm512_loadu_ps(held + j), inverse), lanes(allowed - j));
  }
  std::fill(row + allowed, row + context, c10::BFloat16(0.f));
}

}  // namespace

void causal_softmax_(at::Tensor scores, double scale) {
  TORCH_CHECK(scores.dim() == 3 && scores.device().is_cpu() && scores.scalar_type() == at::kBFloat16 &&
                  scores.is_contiguous(),
              "scores must be a contiguous bfloat16 cpu tensor [tiles, rows, context]");
  const int64_t tiles = scores.size(0), rows = scores.size(1), context = scores.size(2);
  TORCH_CHECK(rows <= context, "a tile cannot have more query rows than context positions");
  auto* base = scores.data_ptr<c10::BFloat16>();
  const __m512 factor = _mm512_set1_ps(static_cast<float>(scale));
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(context, 1));
  at::parallel_for(0, tiles * rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> held(context + kLanes);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t i = item % rows;
      softmax_row(base + item * context, context - rows + i + 1, context, factor, held.data());
    }
  });
}
