// Vector arithmetic the CPU kernels share.
#pragma once
#include <c10/util/BFloat16.h>
#include <immintrin.h>
#include <climits>
#include <cstdint>

constexpr int64_t kLanes = 16;  // float32 values in one AVX-512 register
using Vec = __m512;

// Rounding for the *_round_ps intrinsics: to nearest, as every float32 operation rounds. An
// explicitly rounded multiply is never fused into a following add by the compiler, which keeps
// the kernels that must round where torch does from rounding once where it rounds twice.
constexpr int kNearest = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

// The first `count` of a register's 16 lanes (all of them from 16 on): a row's tail.
inline __mmask16 lanes(int64_t count) {
  return count >= kLanes ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << count) - 1);
}

// float32 rounded to nearest even at bfloat16 precision, as torch's conversion does: the bfloat16
// value is the upper 16 bits of the result.
inline __m512i bf16_rounded_bits(__m512 x) {
  __m512i bits = _mm512_castps_si512(x);
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  return _mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7fff)), lsb);
}

// exp of 16 floats: Cody-Waite range reduction and a degree-6 polynomial, relative error ~1e-7.
// The caller clamps x to [-104, 89] (softmax inputs to [-87.3, 0]); beyond that range the scaling
// would overflow or flush, as expf's result does.
inline __m512 exp16_in_range(__m512 x) {
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500E-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(p, n);
}

// x rounded to bfloat16 precision, kept in float32 for further arithmetic.
inline __m512 round_to_bf16(__m512 x) {
  return _mm512_castsi512_ps(_mm512_and_si512(bf16_rounded_bits(x), _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
}

// The lanes in `mask` of 16 values as float32 (bfloat16 widened exactly), the others 0.
inline __m512 load_lanes(const float* p, __mmask16 mask) { return _mm512_maskz_loadu_ps(mask, p); }
inline __m512 load_lanes(const c10::BFloat16* p, __mmask16 mask) {
  __m256i bits = _mm256_maskz_loadu_epi16(mask, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

// The lanes in `mask` stored in the pointer's dtype (bfloat16 rounded to nearest even).
inline void store_lanes(float* p, __m512 x, __mmask16 mask) { _mm512_mask_storeu_ps(p, mask, x); }
inline void store_lanes(c10::BFloat16* p, __m512 x, __mmask16 mask) {
  _mm256_mask_storeu_epi16(p, mask, _mm512_cvtepi32_epi16(_mm512_srli_epi32(bf16_rounded_bits(x), 16)));
}

// exp for x <= 0 (softmax inputs after subtracting the maximum). Inputs below -87.3 (padding's
// -inf included) give exp(-87.3) ~ 1e-38 rather than 0: nothing beside the maximum's exp(0) = 1 in a sum.
inline __m512 exp16_nonpositive(__m512 x) { return exp16_in_range(_mm512_max_ps(x, _mm512_set1_ps(-87.3f))); }

// The names float32_layers.cpp and rotary_embedding.cpp use for either instruction set
// (vector_math_avx2.h has the same): each operation rounds once, to nearest, as torch's does.
inline Vec load(const float* p) { return _mm512_loadu_ps(p); }
inline void store(float* p, Vec x) { _mm512_storeu_ps(p, x); }
inline Vec broadcast(float x) { return _mm512_set1_ps(x); }
inline Vec mul_rounded(Vec a, Vec b) { return _mm512_mul_round_ps(a, b, kNearest); }
inline Vec add_rounded(Vec a, Vec b) { return _mm512_add_round_ps(a, b, kNearest); }
inline Vec div_rounded(Vec a, Vec b) { return _mm512_div_round_ps(a, b, kNearest); }
inline Vec zero_minus(Vec x) { return _mm512_sub_ps(_mm512_setzero_ps(), x); }
inline Vec flipped_sign(Vec x) {
  return _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(x), _mm512_set1_epi32(INT32_MIN)));
}
