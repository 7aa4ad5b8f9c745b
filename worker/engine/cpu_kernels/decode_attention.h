// The contract's limits and the instruction-set half of paged decode attention (decode_attention.cpp).
#pragma once
#include "aten_slice.h"
#include <cstdint>

constexpr int64_t kHeadDimMultiple = 16;  // head_dim: a whole number of AVX-512 registers (two AVX2 ones)
constexpr int64_t kMaxHeadDim = 256;
constexpr int64_t kMaxGroup = 16;  // query heads per KV head

// out = softmax(q k^T * scale) v for every sequence, read in place from the paged caches; the
// arguments already checked against the contract by paged_decode_attention, q contiguous.
void attend_paged_blocks(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const int64_t* tables,
                         int64_t width, const int64_t* starts, const int64_t* ends, float scale, at::Tensor& out);
