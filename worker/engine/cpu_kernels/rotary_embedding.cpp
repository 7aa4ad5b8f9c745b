// Rotary position embedding of one layer's queries and keys in one pass, float32 or bfloat16.
//
// Why: transformers applies RoPE as `x * cos + rotate_half(x) * sin` for the queries and again for
// the keys: two slices, a negation, a concatenation, two multiplies and an add each, twelve
// dispatched operations a layer. At decode they cost their dispatch (about 1.5 ms of a 30 ms step
// on the 135M model), at prefill a pass over the queries each.
//
// Exactly torch's result, not merely close: every product and the sum are rounded once, to the
// tensor's dtype, as torch's separate operations round them (a bfloat16 product of two bfloat16
// values is exact in float32 before its rounding; a bfloat16 sum is a float32 sum rounded again,
// as torch's own is). The explicitly rounded intrinsics keep the compiler from fusing a multiply
// and an add into one FMA, which would round once where torch rounds twice.
//
//   rotary_embedding(q, k, cos, sin, head_dim):
//     q [B, T, heads * head_dim], k [B, T, kv_heads * head_dim]: one dtype, the last dimension
//         contiguous (rows may be strided: slices of one shared projection)
//     cos, sin [B or 1, T, head_dim], contiguous, in q's dtype; head_dim even
//     returns (q_rotated [B, heads, T, head_dim], k_rotated [B, kv_heads, T, head_dim]), contiguous:
//     the layout transformers' own `apply_rotary_pos_emb` returns after its transpose.
#include "aten_slice.h"
#include <immintrin.h>
#ifdef __AVX512F__
#include "vector_math.h"
#else
#include "vector_math_avx2.h"  // the AVX2 set (cpu_kernels/__init__.py)
#endif
#include <algorithm>
#include <tuple>

namespace {

// To the dtype's precision: float32 results are already rounded; bfloat16 ones round here.
inline Vec round_to(Vec x, const float*) { return x; }
inline Vec round_to(Vec x, const c10::BFloat16*) { return round_to_bf16(x); }

// a * b + c * d with each product and the sum rounded to T, as torch's mul, mul, add are.
template <typename T>
inline Vec rotate(Vec a, Vec b, Vec c, Vec d, const T* tag) {
  Vec first = round_to(mul_rounded(a, b), tag);
  Vec second = round_to(mul_rounded(c, d), tag);
  return add_rounded(first, second);
}

// One head's rotation: head_dim values at `in` -> `out`.
template <typename T>
inline void rotate_head(const T* in, const T* c, const T* s, int64_t head_dim, T* out) {
  const T* tag = nullptr;
  const int64_t half = head_dim / 2;
  for (int64_t i = 0; i < half; i += kLanes) {
    const auto mask = lanes(half - i);
    Vec x1 = load_lanes(in + i, mask), x2 = load_lanes(in + half + i, mask);
    // rotate_half(x) is (-x2, x1): out1 = x1 cos1 + (-x2) sin1, out2 = x2 cos2 + x1 sin2.
    Vec minus_x2 = flipped_sign(x2);
    store_lanes(out + i, rotate(x1, load_lanes(c + i, mask), minus_x2, load_lanes(s + i, mask), tag), mask);
    store_lanes(out + half + i, rotate(x2, load_lanes(c + half + i, mask), x1, load_lanes(s + half + i, mask), tag), mask);
  }
}

// One tensor's heads: x [B, T, heads * D] rows at `row_stride` -> out [B, heads, T, D].
template <typename T>
void rotate_heads(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, int64_t head_dim,
                  at::Tensor& out) {
  const int64_t B = x.size(0), T_len = x.size(1), heads = x.size(2) / head_dim;
  const int64_t batch_stride = x.stride(0), row_stride = x.stride(1);
  const int64_t angle_batch_stride = cos.size(0) == 1 ? 0 : cos.stride(0);
  const T* xp = x.data_ptr<T>();
  const T* cp = cos.data_ptr<T>();
  const T* sp = sin.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const int64_t grain = std::max<int64_t>(1, 4096 / (heads * head_dim));
  at::parallel_for(0, B * T_len, grain, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / T_len, t = item % T_len;
      const T* row = xp + b * batch_stride + t * row_stride;
      const T* c = cp + b * angle_batch_stride + t * head_dim;
      const T* s = sp + b * angle_batch_stride + t * head_dim;
      for (int64_t h = 0; h < heads; ++h)
        rotate_head(row + h * head_dim, c, s, head_dim, op + ((b * heads + h) * T_len + t) * head_dim);
    }
  });
}

void check_input(const at::Tensor& x, const at::Tensor& cos, int64_t head_dim, const char* name) {
  TORCH_CHECK(x.dim() == 3 && x.stride(2) == 1 && x.size(2) % head_dim == 0, name,
              " must be [B, T, heads * head_dim] with its last dimension contiguous");
  TORCH_CHECK(x.scalar_type() == cos.scalar_type() && x.device().is_cpu(), name, " must be a cpu tensor in cos's dtype");
  TORCH_CHECK(cos.size(1) == x.size(1) && (cos.size(0) == 1 || cos.size(0) == x.size(0)),
              "cos and sin must have one row per token of ", name);
}

template <typename T>
std::tuple<at::Tensor, at::Tensor> apply(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos,
                                         const at::Tensor& sin, int64_t head_dim) {
  auto q_out = at::empty({q.size(0), q.size(2) / head_dim, q.size(1), head_dim}, q.options());
  auto k_out = at::empty({k.size(0), k.size(2) / head_dim, k.size(1), head_dim}, k.options());
  if (q.numel() > 0) rotate_heads<T>(q, cos, sin, head_dim, q_out);
  if (k.numel() > 0) rotate_heads<T>(k, cos, sin, head_dim, k_out);
  return {q_out, k_out};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> rotary_embedding(at::Tensor q, at::Tensor k, at::Tensor cos,
                                                    at::Tensor sin, int64_t head_dim) {
  TORCH_CHECK(head_dim > 0 && head_dim % 2 == 0, "head_dim must be positive and even");
  TORCH_CHECK(cos.dim() == 3 && cos.sizes() == sin.sizes() && cos.size(2) == head_dim && cos.is_contiguous() &&
                  sin.is_contiguous() && sin.scalar_type() == cos.scalar_type(),
              "cos and sin must be contiguous [B or 1, T, head_dim] of one dtype");
  check_input(q, cos, head_dim, "q");
  check_input(k, cos, head_dim, "k");
  TORCH_CHECK(q.size(0) == k.size(0) && q.size(1) == k.size(1), "q and k must have the same tokens");
  if (q.scalar_type() == at::kFloat) return apply<float>(q, k, cos, sin, head_dim);
  TORCH_CHECK(q.scalar_type() == at::kBFloat16, "rotary_embedding supports float32 and bfloat16");
  return apply<c10::BFloat16>(q, k, cos, sin, head_dim);
}

// A decode step's queries, keys and values put where its attention reads them, in one pass: the
// rotated query heads token-major, and the rotated keys and the values straight into their cache
// rows. The same values as rotary_embedding followed by paged_decode_step's transposed copies and
// index_copy_ writes, without those copies (three per layer) and the two writes' dispatch.
//   q [1, T, heads * D], k and v [1, T, kv_heads * D]: float32 or bfloat16, last dimension contiguous
//       (rows may be strided: slices of one q|k|v product); cos, sin [1, T, D] contiguous, q's dtype
//   k_cache, v_cache [N, kv_heads, S, D] contiguous; write_rows [T * kv_heads] int64: token t's
//       head h goes to row write_rows[t * kv_heads + h] of the cache viewed as [N * kv_heads * S, D]
//   returns the rotated queries [T, heads, D] contiguous (paged_decode_attention's [B, H, G, D]
//   after a view).
namespace {

template <typename T>
void rotate_into_cache(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cos,
                       const at::Tensor& sin, int64_t head_dim, at::Tensor& k_cache, at::Tensor& v_cache,
                       const int64_t* rp, at::Tensor& q_out) {
  const int64_t tokens = q.size(1), heads = q.size(2) / head_dim, kv_heads = k.size(2) / head_dim;
  const T* qp = q.data_ptr<T>();
  const T* kp = k.data_ptr<T>();
  const T* vp = v.data_ptr<T>();
  const T* cp = cos.data_ptr<T>();
  const T* sp = sin.data_ptr<T>();
  T* qo = q_out.data_ptr<T>();
  T* kc = k_cache.data_ptr<T>();
  T* vc = v_cache.data_ptr<T>();
  const int64_t grain = std::max<int64_t>(1, 4096 / ((heads + 2 * kv_heads) * head_dim));
  at::parallel_for(0, tokens, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const T* c = cp + t * head_dim;
      const T* s = sp + t * head_dim;
      for (int64_t h = 0; h < heads; ++h)
        rotate_head(qp + t * q.stride(1) + h * head_dim, c, s, head_dim, qo + (t * heads + h) * head_dim);
      for (int64_t h = 0; h < kv_heads; ++h) {
        const int64_t row = rp[t * kv_heads + h] * head_dim;
        rotate_head(kp + t * k.stride(1) + h * head_dim, c, s, head_dim, kc + row);
        std::copy_n(vp + t * v.stride(1) + h * head_dim, head_dim, vc + row);
      }
    }
  });
}

}  // namespace

at::Tensor rotary_into_cache(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const at::Tensor& cos, const at::Tensor& sin, int64_t head_dim,
                             at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& write_rows) {
  TORCH_CHECK(head_dim > 0 && head_dim % 2 == 0, "head_dim must be positive and even");
  TORCH_CHECK(q.scalar_type() == at::kBFloat16 || q.scalar_type() == at::kFloat,
              "rotary_into_cache takes float32 or bfloat16");
  TORCH_CHECK(cos.dim() == 3 && cos.size(0) == 1 && cos.sizes() == sin.sizes() && cos.size(2) == head_dim &&
                  cos.is_contiguous() && sin.is_contiguous() && sin.scalar_type() == cos.scalar_type(),
              "cos and sin must be contiguous [1, T, head_dim] of one dtype");
  check_input(q, cos, head_dim, "q");
  check_input(k, cos, head_dim, "k");
  check_input(v, cos, head_dim, "v");
  TORCH_CHECK(q.size(0) == 1 && k.sizes() == v.sizes() && k.size(0) == 1, "q, k, v must be [1, T, width]");
  const int64_t tokens = q.size(1), heads = q.size(2) / head_dim, kv_heads = k.size(2) / head_dim;
  TORCH_CHECK(k_cache.dim() == 4 && k_cache.size(1) == kv_heads && k_cache.size(3) == head_dim &&
                  k_cache.is_contiguous() && v_cache.sizes() == k_cache.sizes() && v_cache.is_contiguous() &&
                  k_cache.scalar_type() == q.scalar_type() && v_cache.scalar_type() == q.scalar_type(),
              "the k and v caches must be contiguous [N, kv_heads, S, head_dim] in q's dtype");
  const auto rows = write_rows.to(at::kLong).contiguous();
  TORCH_CHECK(rows.dim() == 1 && rows.numel() == tokens * kv_heads, "one write row per token and KV head");
  const int64_t cache_rows = k_cache.numel() / head_dim;
  const int64_t* rp = rows.data_ptr<int64_t>();
  for (int64_t i = 0; i < rows.numel(); ++i)
    TORCH_CHECK(0 <= rp[i] && rp[i] < cache_rows, "a write row is outside the cache");
  auto q_out = at::empty({tokens, heads, head_dim}, q.options());
  if (q.scalar_type() == at::kFloat) {
    rotate_into_cache<float>(q, k, v, cos, sin, head_dim, k_cache, v_cache, rp, q_out);
  } else {
    rotate_into_cache<c10::BFloat16>(q, k, v, cos, sin, head_dim, k_cache, v_cache, rp, q_out);
  }
  return q_out;
}
