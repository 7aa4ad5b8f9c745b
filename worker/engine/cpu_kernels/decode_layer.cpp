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
#include <torch/extension.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <string_view>

torch::Tensor rms_norm(torch::Tensor x, torch::Tensor weight, double eps);
torch::Tensor silu_mul(torch::Tensor gate, torch::Tensor up);
torch::Tensor rotary_into_cache(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                const torch::Tensor& cos, const torch::Tensor& sin, int64_t head_dim,
                                torch::Tensor& k_cache, torch::Tensor& v_cache, const torch::Tensor& write_rows);
torch::Tensor paged_decode_attention(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor block_tables,
                                     torch::Tensor starts, torch::Tensor ends, double scale);

namespace {

// x @ W.T + b with W packed by mkldnn::_reorder_linear_weight: the op packed_weights.py calls.
torch::Tensor packed_linear(const torch::Tensor& x, const torch::Tensor& packed,
                            const std::optional<torch::Tensor>& bias) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("mkldnn::_linear_pointwise", "")
          .typed<torch::Tensor(const torch::Tensor&, const torch::Tensor&, const std::optional<torch::Tensor>&,
                               std::string_view, c10::List<std::optional<c10::Scalar>>,
                               std::optional<std::string_view>)>();
  return op.call(x, packed, bias, "none", c10::List<std::optional<c10::Scalar>>(), std::string_view(""));
}

}  // namespace

// The layer's weights, held for its lifetime; `forward` is one decode-only step through it.
//   norms: [hidden] in the layer's dtype; packed weights as packed_weights.py makes them, biases optional
//   q_size, kv_size: the q and each of the k, v widths in the q|k|v product; intermediate: the
//       gate and up widths in the gate|up product
class DecodeLayer {
 public:
  DecodeLayer(torch::Tensor first_norm, double first_eps, torch::Tensor qkv, std::optional<torch::Tensor> qkv_bias,
              int64_t q_size, int64_t kv_size, torch::Tensor o, std::optional<torch::Tensor> o_bias,
              torch::Tensor second_norm, double second_eps, torch::Tensor gate_up,
              std::optional<torch::Tensor> gate_up_bias, int64_t intermediate, torch::Tensor down,
              std::optional<torch::Tensor> down_bias, int64_t head_dim, double scale)
      : first_norm_(first_norm), first_eps_(first_eps), qkv_(qkv), qkv_bias_(qkv_bias), q_size_(q_size),
        kv_size_(kv_size), o_(o), o_bias_(o_bias), second_norm_(second_norm), second_eps_(second_eps),
        gate_up_(gate_up), gate_up_bias_(gate_up_bias), intermediate_(intermediate), down_(down),
        down_bias_(down_bias), head_dim_(head_dim), scale_(scale) {
    TORCH_CHECK(q_size > 0 && kv_size > 0 && intermediate > 0 && head_dim > 0, "sizes must be positive");
  }

  // hidden [1, B, hidden] contiguous, in the layer's dtype, one token per decoding sequence; cos, sin [1, B,
  // head_dim]; the caches, write_rows, block_tables, starts and ends as paged_decode_step takes
  // them. Returns the layer's output [1, B, hidden]; the new keys and values are in the caches.
  torch::Tensor forward(torch::Tensor hidden, torch::Tensor cos, torch::Tensor sin, torch::Tensor k_cache,
                        torch::Tensor v_cache, torch::Tensor write_rows, torch::Tensor block_tables,
                        torch::Tensor starts, torch::Tensor ends) const {
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

 private:
  torch::Tensor first_norm_;
  double first_eps_;
  torch::Tensor qkv_;
  std::optional<torch::Tensor> qkv_bias_;
  int64_t q_size_, kv_size_;
  torch::Tensor o_;
  std::optional<torch::Tensor> o_bias_;
  torch::Tensor second_norm_;
  double second_eps_;
  torch::Tensor gate_up_;
  std::optional<torch::Tensor> gate_up_bias_;
  int64_t intermediate_;
  torch::Tensor down_;
  std::optional<torch::Tensor> down_bias_;
  int64_t head_dim_;
  double scale_;
};

void bind_decode_layer(pybind11::module_& m) {
  pybind11::class_<DecodeLayer>(m, "DecodeLayer")
      .def(pybind11::init<torch::Tensor, double, torch::Tensor, std::optional<torch::Tensor>, int64_t, int64_t,
                          torch::Tensor, std::optional<torch::Tensor>, torch::Tensor, double, torch::Tensor,
                          std::optional<torch::Tensor>, int64_t, torch::Tensor, std::optional<torch::Tensor>,
                          int64_t, double>())
      .def("forward", &DecodeLayer::forward, pybind11::call_guard<pybind11::gil_scoped_release>());
}
