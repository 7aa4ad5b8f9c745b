// Vector arithmetic of the AVX2 kernels (vector_math.h's counterpart for CPUs without AVX-512:
// AMD Zen 1-3, Intel before Skylake-SP). Eight float32 lanes a register, sixteen registers, no
// mask registers: a row's tail is stored through an integer lane mask.
#pragma once
#include <c10/util/BFloat16.h>
#include <immintrin.h>
#include <climits>
#include <cstdint>
#include <cstring>

constexpr int64_t kLanes = 8;  // float32 values in one AVX2 register
using Vec = __m256;

// The first `count` of a register's 8 lanes (all of them from 8 on): a row's tail.
struct Lanes {
  int64_t count;
  bool all() const { return count >= kLanes; }
  __m256i bits() const {  // as _mm256_maskload_ps and _mm256_maskstore_ps take them
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(all() ? kLanes : count)),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
};
inline Lanes lanes(int64_t count) { return Lanes{count}; }

// float32 rounded to nearest even at bfloat16 precision, as torch's conversion does: the bfloat16
// value is the upper 16 bits of the result.
inline __m256i bf16_rounded_bits(Vec x) {
  __m256i bits = _mm256_castps_si256(x);
  __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  return _mm256_add_epi32(_mm256_add_epi32(bits, _mm256_set1_epi32(0x7fff)), lsb);
}

// 8 values as float32 (bfloat16 widened exactly).
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const c10::BFloat16* p) {
  __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
}

// 8 values stored in the pointer's dtype, bfloat16 rounded to nearest even as torch's conversion does.
inline void store8(float* p, __m256 x) { _mm256_storeu_ps(p, x); }
inline void store8(c10::BFloat16* p, __m256 x) {
  __m256i rounded = _mm256_srli_epi32(bf16_rounded_bits(x), 16);
  // packus narrows within each 128-bit half; the permute brings the halves' low quadwords together.
  __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(rounded, rounded), 0x08);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
}

inline float reduce_max8(__m256 x) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

inline float reduce_add8(__m256 x) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

// Lane i of the result is the sum of v[i]'s 8 lanes: two rounds of horizontal adds within each
// 128-bit half, then the halves crossed; 9 operations for 8 rows against ~5 each one at a time.
inline __m256 sum8x8(const __m256* v) {
  __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
  __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

// exp for x <= 0 (softmax inputs after subtracting the maximum), vector_math.h's method: Cody-Waite
// range reduction and a degree-6 polynomial, relative error ~1e-7, with 2^n built in the exponent
// bits (AVX2 has no scalef). Inputs below -87.3 (padding's -inf included) give exp(-87.3) ~ 1e-38
// rather than 0: nothing beside the maximum's exp(0) = 1 in a sum; n stays >= -126, a normal float.
inline __m256 exp8_nonpositive(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500E-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894E-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459E-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201E-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
  __m256i scale = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(scale));
}

// x rounded to bfloat16 precision, kept in float32 for further arithmetic.
inline Vec round_to_bf16(Vec x) {
  return _mm256_castsi256_ps(_mm256_and_si256(bf16_rounded_bits(x), _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
}

// The lanes in `mask` as float32 (bfloat16 widened exactly), the others 0. AVX2 has no 16-bit
// masked load: a bfloat16 tail goes through a zeroed buffer.
inline Vec load_lanes(const float* p, Lanes mask) {
  return mask.all() ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, mask.bits());
}
inline Vec load_lanes(const c10::BFloat16* p, Lanes mask) {
  if (mask.all()) return load8(p);
  c10::BFloat16 tail[kLanes] = {};
  std::memcpy(tail, p, mask.count * sizeof(c10::BFloat16));
  return load8(tail);
}

// The lanes in `mask` stored in the pointer's dtype (bfloat16 rounded to nearest even).
inline void store_lanes(float* p, Vec x, Lanes mask) {
  if (mask.all()) return _mm256_storeu_ps(p, x);
  _mm256_maskstore_ps(p, mask.bits(), x);
}
inline void store_lanes(c10::BFloat16* p, Vec x, Lanes mask) {
  if (mask.all()) return store8(p, x);
  c10::BFloat16 tail[kLanes];
  store8(tail, x);
  std::memcpy(p, tail, mask.count * sizeof(c10::BFloat16));
}

// The names float32_layers.cpp and rotary_embedding.cpp use for either instruction set
// (vector_math.h has the same). Each operation rounds once, to nearest, as torch's does: the AVX2
// set compiles with -ffp-contract=off, so no multiply is fused into an add behind these.
inline Vec load(const float* p) { return _mm256_loadu_ps(p); }
inline void store(float* p, Vec x) { _mm256_storeu_ps(p, x); }
inline Vec broadcast(float x) { return _mm256_set1_ps(x); }
inline Vec mul_rounded(Vec a, Vec b) { return _mm256_mul_ps(a, b); }
inline Vec add_rounded(Vec a, Vec b) { return _mm256_add_ps(a, b); }
inline Vec div_rounded(Vec a, Vec b) { return _mm256_div_ps(a, b); }
inline Vec zero_minus(Vec x) { return _mm256_sub_ps(_mm256_setzero_ps(), x); }
inline Vec flipped_sign(Vec x) {
  return _mm256_castsi256_ps(_mm256_xor_si256(_mm256_castps_si256(x), _mm256_set1_epi32(INT32_MIN)));
}
