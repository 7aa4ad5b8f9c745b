// The Python module of the CPU kernels: one extension, one entry per kernel source. An AVX2 build
// (no __AVX512F__) has no greedy argmax or prefill softmax, whose sources are AVX-512 code.
#include <torch/python.h>  // pybind11 and its tensor casters; not torch/extension.h (aten_slice.h says why)

#include "decode_layer.h"

torch::Tensor paged_decode_attention(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor block_tables,
                                     torch::Tensor starts, torch::Tensor ends, double scale);
torch::Tensor paged_decode_step(torch::Tensor query, torch::Tensor key, torch::Tensor value, torch::Tensor k_cache,
                                torch::Tensor v_cache, torch::Tensor write_rows, torch::Tensor block_tables,
                                torch::Tensor starts, torch::Tensor ends, double scale);
torch::Tensor rms_norm(torch::Tensor x, torch::Tensor weight, double eps);
torch::Tensor silu_mul(torch::Tensor gate, torch::Tensor up);
torch::Tensor greedy_argmax(torch::Tensor logits);
void causal_softmax_(torch::Tensor scores, double scale);
std::tuple<torch::Tensor, torch::Tensor> rotary_embedding(torch::Tensor q, torch::Tensor k, torch::Tensor cos,
                                                          torch::Tensor sin, int64_t head_dim);

// Every kernel runs without the GIL, as torch's own operations do. The compiled decode layers take
// most of a decode step (about 20 of 24 ms on bench-135m); holding the GIL through them, the
// worker's event-loop thread (its gRPC session) could run only when Python's switch interval
// (5 ms) forced the GIL loose between two layers.
using WithoutGil = pybind11::call_guard<pybind11::gil_scoped_release>;

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("paged_decode_attention", &paged_decode_attention, WithoutGil());
  m.def("paged_decode_step", &paged_decode_step, WithoutGil());
  m.def("rms_norm", &rms_norm, WithoutGil());
  m.def("silu_mul", &silu_mul, WithoutGil());
  m.def("rotary_embedding", &rotary_embedding, WithoutGil());
  pybind11::class_<DecodeLayer>(m, "DecodeLayer")
      .def(pybind11::init<torch::Tensor, double, torch::Tensor, std::optional<torch::Tensor>, int64_t, int64_t,
                          torch::Tensor, std::optional<torch::Tensor>, torch::Tensor, double, torch::Tensor,
                          std::optional<torch::Tensor>, int64_t, torch::Tensor, std::optional<torch::Tensor>,
                          int64_t, double>())
      .def("forward", &DecodeLayer::forward, WithoutGil());
#ifdef __AVX512F__
  m.def("greedy_argmax", &greedy_argmax, WithoutGil());
  m.def("causal_softmax_", &causal_softmax_, WithoutGil());
#endif
}
