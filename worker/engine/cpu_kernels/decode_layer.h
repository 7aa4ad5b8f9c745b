// DecodeLayer: one pre-norm decoder layer of a decode-only step as one call (decode_layer.cpp says
// why and what it computes; bindings.cpp makes it a Python class).
#pragma once
#include "aten_slice.h"

#include <optional>

// The layer's weights, held for its lifetime; `forward` is one decode-only step through it.
//   norms: [hidden] in the layer's dtype; packed weights as packed_weights.py makes them, biases optional
//   q_size, kv_size: the q and each of the k, v widths in the q|k|v product; intermediate: the
//       gate and up widths in the gate|up product
class DecodeLayer {
 public:
  DecodeLayer(at::Tensor first_norm, double first_eps, at::Tensor qkv, std::optional<at::Tensor> qkv_bias,
              int64_t q_size, int64_t kv_size, at::Tensor o, std::optional<at::Tensor> o_bias,
              at::Tensor second_norm, double second_eps, at::Tensor gate_up,
              std::optional<at::Tensor> gate_up_bias, int64_t intermediate, at::Tensor down,
              std::optional<at::Tensor> down_bias, int64_t head_dim, double scale)
      : first_norm_(first_norm), first_eps_(first_eps), qkv_(qkv), qkv_bias_(qkv_bias), q_size_(q_size),
        kv_size_(kv_size), o_(o), o_bias_(o_bias), second_norm_(second_norm), second_eps_(second_eps),
        gate_up_(gate_up), gate_up_bias_(gate_up_bias), intermediate_(intermediate), down_(down),
        down_bias_(down_bias), head_dim_(head_dim), scale_(scale) {
    TORCH_CHECK(q_size > 0 && kv_size > 0 && intermediate > 0 && head_dim > 0, "sizes must be positive");
  }

  // hidden [1, B, hidden] contiguous, in the layer's dtype, one token per decoding sequence; cos, sin [1, B,
  // head_dim]; the caches, write_rows, block_tables, starts and ends as paged_decode_step takes
  // them. Returns the layer's output [1, B, hidden]; the new keys and values are in the caches.
  at::Tensor forward(at::Tensor hidden, at::Tensor cos, at::Tensor sin, at::Tensor k_cache,
                     at::Tensor v_cache, at::Tensor write_rows, at::Tensor block_tables,
                     at::Tensor starts, at::Tensor ends) const;

 private:
  at::Tensor first_norm_;
  double first_eps_;
  at::Tensor qkv_;
  std::optional<at::Tensor> qkv_bias_;
  int64_t q_size_, kv_size_;
  at::Tensor o_;
  std::optional<at::Tensor> o_bias_;
  at::Tensor second_norm_;
  double second_eps_;
  at::Tensor gate_up_;
  std::optional<at::Tensor> gate_up_bias_;
  int64_t intermediate_;
  at::Tensor down_;
  std::optional<at::Tensor> down_bias_;
  int64_t head_dim_;
  double scale_;
};
