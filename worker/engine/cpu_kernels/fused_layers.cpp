// Two of a decoder layer's elementwise blocks as one pass each, on the CPU. This file is the
// bfloat16 arithmetic, AVX-512 only (the AVX2 set refuses bfloat16: on those CPUs bfloat16 is
// served widened); float32 tensors go to float32_layers.cpp, which rounds exactly as torch does.
//
// Why: in eager torch an RMSNorm is nine operations (a float32 copy, pow, mean, add, rsqrt, two
// multiplies, a bfloat16 copy) and the MLP's activation two (silu, multiply). At decode (one token
// per sequence) each costs its dispatch, not its arithmetic; at prefill each is a pass over
// megabytes. Both compute what transformers' Llama code computes, rounding to bfloat16 at the same
// points; only the order of the variance's float32 sum differs.
//
//   rms_norm(x, weight, eps): x [..., n] and weight [n] of one dtype, x contiguous ->
//       weight * bf16(x * rsqrt(mean(x^2) + eps)), the mean in float32
//   silu_mul(gate, up): same-shape, same-dtype [..., n], each row contiguous (rows may be strided, as
//       two slices of one [..., 2n] projection are; the leading dims must flatten to rows) ->
//       contiguous bf16(bf16(silu(gate)) * up)
#include "aten_slice.h"
#include <immintrin.h>
#ifdef __AVX512F__
#include "vector_math.h"
#endif
#include <algorithm>
#include <cmath>

at::Tensor rms_norm_f32(const at::Tensor& x, const at::Tensor& weight, double eps);
at::Tensor silu_mul_f32(const at::Tensor& gate, const at::Tensor& up);

namespace {

constexpr int64_t kGrainElements = 1 << 14;  // below this a call stays on one thread

#ifdef __AVX512F__
// exp over float32's whole range: past it the result saturates to 0 or inf, as expf's does.
inline __m512 exp16(__m512 x) {
  return exp16_in_range(_mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.f)), _mm512_set1_ps(89.f)));
}
#endif

bool is_float32(const at::Tensor& t) { return t.scalar_type() == at::kFloat; }

void check_contiguous(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && (t.scalar_type() == at::kBFloat16 || is_float32(t)) && t.is_contiguous(),
              name, " must be a contiguous bfloat16 or float32 cpu tensor");
}

// Rows of adjacent elements, at any one distance from each other (a slice of a wider output).
void check_rows(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && (t.scalar_type() == at::kBFloat16 || is_float32(t)) && t.dim() >= 1 &&
                  t.stride(-1) == 1,
              name, " must be a bfloat16 or float32 cpu tensor whose last dimension is contiguous");
}

}  // namespace

at::Tensor rms_norm(at::Tensor x, at::Tensor weight, double eps) {
  check_contiguous(x, "x");
  check_contiguous(weight, "weight");
  const int64_t n = weight.numel();
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == n && n > 0, "x's last dimension must match weight");
  TORCH_CHECK(x.scalar_type() == weight.scalar_type(), "x and weight must have one dtype");
  if (is_float32(x)) return rms_norm_f32(x, weight, eps);
#ifndef __AVX512F__
  TORCH_CHECK(false, "a bfloat16 rms_norm needs the AVX-512 kernel set");
#else
  auto out = at::empty_like(x);
  const int64_t rows = x.numel() / n;
  const auto* xp = x.data_ptr<c10::BFloat16>();
  const auto* wp = weight.data_ptr<c10::BFloat16>();
  auto* op = out.data_ptr<c10::BFloat16>();
  const float epsilon = static_cast<float>(eps);
  at::parallel_for(0, rows, std::max<int64_t>(1, kGrainElements / n), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const c10::BFloat16* in = xp + row * n;
      __m512 squares = _mm512_setzero_ps();
      for (int64_t i = 0; i < n; i += kLanes) {
        __m512 v = load_lanes(in + i, lanes(n - i));
        squares = _mm512_fmadd_ps(v, v, squares);
      }
      const float inverse_rms = 1.f / std::sqrt(_mm512_reduce_add_ps(squares) / static_cast<float>(n) + epsilon);
      const __m512 scale = _mm512_set1_ps(inverse_rms);
      for (int64_t i = 0; i < n; i += kLanes) {
        const __mmask16 mask = lanes(n - i);
        __m512 normed = round_to_bf16(_mm512_mul_ps(load_lanes(in + i, mask), scale));
        store_lanes(op + row * n + i, _mm512_mul_ps(load_lanes(wp + i, mask), normed), mask);
      }
    }
  });
  return out;
#endif
}

at::Tensor silu_mul(at::Tensor gate, at::Tensor up) {
  check_rows(gate, "gate");
  check_rows(up, "up");
  TORCH_CHECK(gate.sizes() == up.sizes() && gate.scalar_type() == up.scalar_type(),
              "gate and up must have one shape and one dtype");
  if (gate.numel() == 0) return at::empty(gate.sizes(), gate.options());
  if (is_float32(gate)) return silu_mul_f32(gate, up);
#ifndef __AVX512F__
  TORCH_CHECK(false, "a bfloat16 silu_mul needs the AVX-512 kernel set");
#else
  const int64_t n = gate.size(-1);
  auto out = at::empty(gate.sizes(), gate.options());
  // Rows may be strided (gate and up as the two halves of one projection's output), elements not.
  const auto gate_rows = gate.view({-1, n});
  const auto up_rows = up.view({-1, n});
  const int64_t rows = gate_rows.size(0);
  const int64_t gate_stride = gate_rows.stride(0), up_stride = up_rows.stride(0);
  const auto* gp = gate_rows.data_ptr<c10::BFloat16>();
  const auto* upp = up_rows.data_ptr<c10::BFloat16>();
  auto* op = out.data_ptr<c10::BFloat16>();
  at::parallel_for(0, rows, std::max<int64_t>(1, kGrainElements / n), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const c10::BFloat16* g_row = gp + row * gate_stride;
      const c10::BFloat16* u_row = upp + row * up_stride;
      for (int64_t i = 0; i < n; i += kLanes) {
        const __mmask16 mask = lanes(n - i);
        __m512 g = load_lanes(g_row + i, mask);
        __m512 denominator = _mm512_add_ps(_mm512_set1_ps(1.f), exp16(_mm512_sub_ps(_mm512_setzero_ps(), g)));
        __m512 silu = round_to_bf16(_mm512_div_ps(g, denominator));
        store_lanes(op + row * n + i, _mm512_mul_ps(silu, load_lanes(u_row + i, mask)), mask);
      }
    }
  });
  return out;
#endif
}
