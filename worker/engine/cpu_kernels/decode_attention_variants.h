// The compiled variants of decode attention's kernel and the entry decode_attention.cpp calls,
// shared by the two instruction sets' files: each #includes this after defining, in its anonymous
// namespace, decode_kernel<T, kG, kChunks> (query heads per KV head and head_dim / kLanes when known
// at compile time, 0 when read from q) and kLanes. Only one of the two files is in a build.
#pragma once
#include "aten_slice.h"
#include <cstdint>

namespace {

// Variants for the common shapes: head_dim 64 or 128 with 1 to 8 query heads per KV head (Llama,
// Qwen, Mistral, SmolLM, ...); any other shape runs the general loops.
template <typename T, int kChunks, int kG = 1>
void with_group(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const int64_t* tables,
                int64_t width, const int64_t* starts, const int64_t* ends, float scale, at::Tensor& out) {
  if constexpr (kG <= 8) {
    if (q.size(2) == kG) return decode_kernel<T, kG, kChunks>(q, k, v, tables, width, starts, ends, scale, out);
    return with_group<T, kChunks, kG + 1>(q, k, v, tables, width, starts, ends, scale, out);
  } else {
    decode_kernel<T, 0, kChunks>(q, k, v, tables, width, starts, ends, scale, out);
  }
}

template <typename T>
void dispatch(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const int64_t* tables,
              int64_t width, const int64_t* starts, const int64_t* ends, float scale, at::Tensor& out) {
  switch (q.size(3) / kLanes) {  // head_dim is a whole number of registers (the contract)
    case 64 / kLanes: return with_group<T, 64 / kLanes>(q, k, v, tables, width, starts, ends, scale, out);
    case 128 / kLanes: return with_group<T, 128 / kLanes>(q, k, v, tables, width, starts, ends, scale, out);
    default: return decode_kernel<T>(q, k, v, tables, width, starts, ends, scale, out);
  }
}

}  // namespace

void attend_paged_blocks(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const int64_t* tables,
                         int64_t width, const int64_t* starts, const int64_t* ends, float scale, at::Tensor& out) {
  if (q.scalar_type() == at::kFloat) {
    dispatch<float>(q, k, v, tables, width, starts, ends, scale, out);
  } else {
    dispatch<c10::BFloat16>(q, k, v, tables, width, starts, ends, scale, out);
  }
}
