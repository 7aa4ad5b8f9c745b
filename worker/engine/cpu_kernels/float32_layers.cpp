// RMSNorm and the gated SiLU of a float32 decoder layer, bit for bit what torch's operations give.
//
// Why: in float32 the engine's greedy output must equal transformers' token for token, so a fused
// kernel may not round anywhere torch does not. transformers' Llama code computes
//   rms_norm: weight * (x * rsqrt(mean(x.pow(2)) + eps))      (pow, sum, div, add, rsqrt, mul, mul)
//   mlp:      silu(gate) * up                                   (silu, mul)
// as separate operations; at decode each costs its dispatch and at prefill each is a pass over
// megabytes. Here every elementwise step rounds once to float32 as torch's does (explicitly rounded
// intrinsics, so the compiler cannot fuse a multiply into an add), and the two steps whose result
// depends on how torch organises its work follow torch's organisation:
// - the sum of squares: torch's sum kernel for float32 runs its 8-lane (AVX2) code even on AVX-512
//   CPUs, with the cascade of SumKernel.cpp (multi_row_sum: 4 interleaved vector accumulators, four
//   levels of partial sums), then the row's tail, then the 8 lanes in order; rsqrt is torch's own
//   operation (on x86 it is MKL's, which differs from 1 / sqrt in the last bit);
// - silu: torch's vectorized kernel computes x / (1 + exp(-x)) with Sleef's expf (1-ulp) on pairs
//   of vectors (16 lanes on AVX-512, 8 on AVX2) from the start of each contiguous run it is handed,
//   and glibc's expf on the run's last few elements; runs are rows (or the whole tensor when
//   contiguous) cut where at::parallel_for splits the elements among threads (GRAIN_SIZE). Sleef's
//   expf of the register width is called from libtorch_cpu itself; where it cannot be found,
//   silu_mul runs torch's operations.
// The same source builds into the AVX-512 and the AVX2 kernel sets (cpu_kernels/__init__.py).
// fused_layers.py checks the result against the module's own forward, bit for bit, at load; the
// unit tests compare with torch over shapes, row counts and thread counts.
#include "aten_slice.h"
#include <ATen/TensorIterator.h>  // at::internal::GRAIN_SIZE: the split torch's own SiLU makes
#include <ATen/TensorOperators.h>
#include <ATen/ops/rsqrt.h>
#include <ATen/ops/silu.h>
#include <dlfcn.h>
#include <immintrin.h>
#ifdef __AVX512F__
#include "vector_math.h"
#else
#include "vector_math_avx2.h"
#endif
#include <algorithm>
#include <cmath>

namespace {

constexpr int64_t kSumLanes = 8;          // torch's float32 sum: its AVX2 kernel
constexpr int64_t kInterleaved = 4;       // SumKernel.cpp's ilp_factor
constexpr int64_t kLevels = 4;            // SumKernel.cpp's num_levels
constexpr int64_t kSiluRun = 2 * kLanes;  // torch's vectorized loop: two vectors at a time
constexpr int64_t kRowGrainElements = 1 << 14;

using ExpVec = Vec (*)(Vec);
#ifdef __AVX512F__
constexpr const char* kSleefExp = "Sleef_expf16_u10";
#else
constexpr const char* kSleefExp = "Sleef_expf8_u10";
#endif

// Sleef's expf of the register width as linked into libtorch_cpu (the function torch's
// Vectorized<float>::exp calls).
ExpVec torch_exp() {
  static const ExpVec exp = [] {
    void* library = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD);
    void* symbol = library ? dlsym(library, kSleefExp) : nullptr;
    return reinterpret_cast<ExpVec>(symbol ? symbol : dlsym(RTLD_DEFAULT, kSleefExp));
  }();
  return exp;
}

int64_t ceil_log2(int64_t x) {
  int64_t bits = 0;
  for (uint64_t v = x - 1; v != 0; v >>= 1) ++bits;
  return x <= 2 ? 1 : bits;
}

// x * x of 8 floats, rounded on its own: a 512-bit multiply with explicit rounding is never fused
// into the add that follows; the AVX2 set compiles with -ffp-contract=off, which says the same.
inline __m256 squares8(const float* p) {
#ifdef __AVX512F__
  const __m512 x = _mm512_castps256_ps512(_mm256_loadu_ps(p));
  return _mm512_castps512_ps256(_mm512_mul_round_ps(x, x, kNearest));
#else
  const __m256 x = _mm256_loadu_ps(p);
  return _mm256_mul_ps(x, x);
#endif
}

// sum(x[i]^2) in the order of torch's vectorized_inner_sum -> row_sum -> multi_row_sum.
float sum_of_squares(const float* row, int64_t n) {
  const int64_t vectors = n / kSumLanes, groups = vectors / kInterleaved;
  const int64_t level_power = std::max<int64_t>(4, ceil_log2(groups) / kLevels);
  const int64_t level_step = int64_t{1} << level_power, level_mask = level_step - 1;
  __m256 acc[kLevels][kInterleaved];
  for (auto& level : acc)
    for (auto& a : level) a = _mm256_setzero_ps();
  auto add_group = [&](int64_t group) {
    for (int64_t k = 0; k < kInterleaved; ++k)
      acc[0][k] = _mm256_add_ps(acc[0][k], squares8(row + (group * kInterleaved + k) * kSumLanes));
  };
  int64_t i = 0;
  while (i + level_step <= groups) {
    for (int64_t j = 0; j < level_step; ++j, ++i) add_group(i);
    for (int64_t level = 1; level < kLevels; ++level) {
      for (int64_t k = 0; k < kInterleaved; ++k) {
        acc[level][k] = _mm256_add_ps(acc[level][k], acc[level - 1][k]);
        acc[level - 1][k] = _mm256_setzero_ps();
      }
      if ((i & (level_mask << (level * level_power))) != 0) break;
    }
  }
  for (; i < groups; ++i) add_group(i);
  for (int64_t level = 1; level < kLevels; ++level)
    for (int64_t k = 0; k < kInterleaved; ++k) acc[0][k] = _mm256_add_ps(acc[0][k], acc[level][k]);
  __m256 total = acc[0][0];
  for (int64_t v = groups * kInterleaved; v < vectors; ++v) total = _mm256_add_ps(total, squares8(row + v * kSumLanes));
  for (int64_t k = 1; k < kInterleaved; ++k) total = _mm256_add_ps(total, acc[0][k]);
  float sum = 0.f;
  for (int64_t t = vectors * kSumLanes; t < n; ++t) {
    const volatile float square = row[t] * row[t];  // rounded before the add, as torch's pow output is
    sum += square;
  }
  alignas(32) float lanes[kSumLanes];
  _mm256_store_ps(lanes, total);
  for (float lane : lanes) sum += lane;
  return sum;
}

// silu(g) * u over one contiguous run, as torch's vectorized loop treats a run it is handed.
void silu_mul_run(const float* g, const float* u, float* out, int64_t length, ExpVec exp) {
  const Vec one = broadcast(1.f);
  int64_t i = 0;
  for (; i + kSiluRun <= length; i += kSiluRun) {
    for (int64_t h = i; h < i + kSiluRun; h += kLanes) {
      const Vec x = load(g + h);
      const Vec silu = div_rounded(x, add_rounded(one, exp(zero_minus(x))));
      store(out + h, mul_rounded(silu, load(u + h)));
    }
  }
  for (; i < length; ++i) out[i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
}

}  // namespace

// x [..., n] contiguous float32, weight [n] float32.
at::Tensor rms_norm_f32(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const int64_t n = weight.numel();
  const int64_t rows = x.numel() / n;
  auto out = at::empty_like(x);
  auto shifted = at::empty({rows}, x.options());  // mean(x^2) + eps, one per row
  const float* xp = x.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  float* op = out.data_ptr<float>();
  float* sp = shifted.data_ptr<float>();
  const float epsilon = static_cast<float>(eps);
  const int64_t grain = std::max<int64_t>(1, kRowGrainElements / n);
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      sp[r] = sum_of_squares(xp + r * n, n) / static_cast<float>(n) + epsilon;
    }
  });
  const auto inverse = at::rsqrt(shifted);  // torch's own: its rounding is MKL's on x86
  const float* ip = inverse.data_ptr<float>();
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* in = xp + r * n;
      const Vec scale = broadcast(ip[r]);
      int64_t i = 0;
      for (; i + kLanes <= n; i += kLanes) {
        const Vec normed = mul_rounded(load(in + i), scale);
        store(op + r * n + i, mul_rounded(load(wp + i), normed));
      }
      for (; i < n; ++i) op[r * n + i] = wp[i] * (in[i] * ip[r]);  // no add: nothing to fuse
    }
  });
  return out;
}

// gate, up [..., n] float32 of one shape, each row contiguous (rows may be strided).
at::Tensor silu_mul_f32(const at::Tensor& gate, const at::Tensor& up) {
  const ExpVec exp = torch_exp();
  if (exp == nullptr) return at::silu(gate) * up;
  const int64_t n = gate.size(-1);
  auto out = at::empty(gate.sizes(), gate.options());
  // A contiguous gate is one run to torch (its rows coalesce into one dimension), a strided one a
  // run per row. up's layout changes nothing (the multiply rounds once either way), so a strided up
  // beside a contiguous gate is made contiguous too, and the runs are the gate's.
  const bool one_run = gate.is_contiguous();
  const auto gate_rows = gate.view({-1, n});
  const auto up_rows = one_run ? up.contiguous().view({-1, n}) : up.view({-1, n});
  const int64_t rows = gate_rows.size(0), gate_stride = gate_rows.stride(0), up_stride = up_rows.stride(0);
  const float* gp = gate_rows.data_ptr<float>();
  const float* upp = up_rows.data_ptr<float>();
  float* op = out.data_ptr<float>();
  auto elements = [&](int64_t begin, int64_t end) {
    if (one_run) return silu_mul_run(gp + begin, upp + begin, op + begin, end - begin, exp);
    for (int64_t position = begin; position < end;) {
      const int64_t row = position / n, column = position % n, length = std::min(n - column, end - position);
      silu_mul_run(gp + row * gate_stride + column, upp + row * up_stride + column, op + row * n + column, length,
                   exp);
      position += length;
    }
  };
  const int64_t count = rows * n;
  if (count < at::internal::GRAIN_SIZE || at::get_num_threads() == 1) {
    elements(0, count);
  } else {
    at::parallel_for(0, count, at::internal::GRAIN_SIZE, elements);
  }
  return out;
}
