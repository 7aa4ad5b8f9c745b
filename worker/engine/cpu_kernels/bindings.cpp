// The Python module of the CPU kernels: one extension, one entry per kernel source.
#include <torch/extension.h>

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
void bind_decode_layer(pybind11::module_& m);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("paged_decode_attention", &paged_decode_attention);
  m.def("paged_decode_step", &paged_decode_step);
  m.def("rms_norm", &rms_norm);
  m.def("silu_mul", &silu_mul);
  m.def("greedy_argmax", &greedy_argmax);
  m.def("rotary_embedding", &rotary_embedding);
  m.def("causal_softmax_", &causal_softmax_);
  bind_decode_layer(m);
}
