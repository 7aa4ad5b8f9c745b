// One pre-norm decoder layer of a decode-only step (bfloat16 or float32) as one call from Python.
//
// Why: at decode a step's 32 tokens make a layer's operations short (about 600 us for the whole
// layer of bench-135m), and in Python each of them costs its dispatch: the layer's module calls,
// transformers' attention-function lookup and the argument parsing of a dozen operations took about
// 3 ms of a 27 ms step. Here the same arithmetic runs in the same order on the same values, so the
// result is bit for bit the Python path's (decode_layer.py checks that at load, layer by layer).
//
// The layer (Llama's block, with the engine's rewrites in place: fused_layers, fused_projections,
// packed_weights, rotary_embedding, paged_decode_step):
//   h   = x + o(attention(rotary(q(n1(x)), k(n1(x))), v(n1(x))))   with q|k|v one packed product
//   out = h + down(silu(gate(n2(h))) * up(n2(h)))                   with gate|up one packed product
// where n1, n2 are rms_norm and attention is paged_decode_step's: the new keys and values written
// first, then paged_decode_attention. The rotation and the writes are one pass here
// (rotary_into_cache), where the Python path's rotary_embedding and paged_decode_step make three
// transposed copies and two index_copy_ writes a layer (in-process on bench-135m, five alternating
// pairs of runs: decode step 23.9 -> 23.4 ms, median of the runs' medians).
#include "decode_layer.h"

#include <ATen/TensorOperators.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <string_view>

at::Tensor rms_norm(at::Tensor x, at::Tensor weight, double eps);
at::Tensor silu_mul(at::Tensor gate, at::Tensor up);
at::Tensor rotary_into_cache(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const at::Tensor& cos, const at::Tensor& sin, int64_t head_dim,
                             at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& write_rows);
at::Tensor paged_decode_attention(at::Tensor q, at::Tensor k, at::Tensor v, at::Tensor block_tables,
                                  at::Tensor starts, at::Tensor ends, double scale);

namespace {

// x @ W.T + b with W packed by mkldnn::_reorder_linear_weight: the op packed_weights.py calls.
at::Tensor packed_linear(const at::Tensor& x, const at::Tensor& packed,
                         const std::optional<at::Tensor>& bias) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("mkldnn::_linear_pointwise", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                            std::string_view, c10::List<std::optional<c10::Scalar>>,
                            std::optional<std::string_view>)>();
  return op.call(x, packed, bias, "none", c10::List<std::optional<c10::Scalar>>(), std::string_view(""));
}

}  // namespace

at::Tensor DecodeLayer::forward(at::Tensor hidden, at::Tensor cos, at::Tensor sin, at::Tensor k_cache,
                               at::Tensor v_cache, at::Tensor write_rows, at::Tensor block_tables,
                               at::Tensor starts, at::Tensor ends) const {
  TORCH_CHECK(hidden.dim() == 3 && hidden.size(0) == 1, "hidden must be [1, tokens, hidden]");
  const int64_t tokens = hidden.size(1);
  const auto qkv = packed_linear(rms_norm(hidden, first_norm_, first_eps_), qkv_, qkv_bias_);
  const auto query = rotary_into_cache(qkv.narrow(-1, 0, q_size_), qkv.narrow(-1, q_size_, kv_size_),
                                       qkv.narrow(-1, q_size_ + kv_size_, kv_size_), cos, sin, head_dim_, k_cache,
                                       v_cache, write_rows);
  const int64_t kv_heads = kv_size_ / head_dim_;
  const auto attended = paged_decode_attention(query.view({tokens, kv_heads, -1, head_dim_}), k_cache, v_cache,
                                               block_tables, starts, ends, scale_)
                            .view({1, tokens, -1});
  const auto residual = hidden + packed_linear(attended, o_, o_bias_);
  const auto gate_up = packed_linear(rms_norm(residual, second_norm_, second_eps_), gate_up_, gate_up_bias_);
  const auto activated = silu_mul(gate_up.narrow(-1, 0, intermediate_), gate_up.narrow(-1, intermediate_, intermediate_));
  return residual + packed_linear(activated, down_, down_bias_);
}

