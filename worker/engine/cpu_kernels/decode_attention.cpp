// Decode attention on the CPU, read in place from the paged KV cache: every decoding sequence's
// one query token (its query heads that share a KV head packed as G rows) against the keys and
// values in that sequence's blocks.
//
// Why a kernel: torch's SDPA on the CPU handles these tiny per-sequence problems ([G x D] against
// [T x D]) as small GEMMs, needs the context contiguous (a gather or a copy of every context, every
// step), and for bfloat16 converts through intermediate buffers. Decode attention is a streaming
// read of K and V, so this follows the block table, reads each key and value row once where it
// lies, converts bfloat16 to float32 in registers, and accumulates in float32 (the same precision
// SDPA's CPU kernel uses). Blocks shared by several sequences (a common prefix) are read by each of
// them from the same memory. Two passes per sequence, each over its blocks with all KV heads of a
// block together: scores and softmax, then the weighted sum of values.
//
// Contract (checked in paged_decode_attention below and in Python before the call):
//   q             [B, H, G, D]  float32 or bfloat16, D a multiple of 16 and <= 256, G <= 16
//   k, v caches   [N, H, S, D]  same dtype, contiguous (kv_cache.py's layout: S tokens a block)
//   block_tables  [B, W] int64: sequence b's position t is in block block_tables[b][t / S], row t % S
//   starts, ends  [B] int64: sequence b attends to positions [starts[b], ends[b]), non-empty,
//                 ends[b] <= W * S, and every block it reads is in [0, N)
//   returns [B, H, G, D] in q's dtype.
//
// The arithmetic lives in one file per instruction set, built for the CPU's (cpu_kernels/__init__.py):
// decode_attention_avx512.cpp and decode_attention_avx2.cpp, behind attend_paged_blocks.
#include "aten_slice.h"
#include "decode_attention.h"

at::Tensor paged_decode_attention(at::Tensor q, at::Tensor k, at::Tensor v, at::Tensor block_tables,
                                  at::Tensor starts, at::Tensor ends, double scale) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "q and the k, v caches must be 4-d");
  TORCH_CHECK(q.device().is_cpu() && k.device().is_cpu() && v.device().is_cpu(), "cpu tensors only");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), "q, k, v dtypes differ");
  TORCH_CHECK(k.sizes() == v.sizes() && k.is_contiguous() && v.is_contiguous(),
              "the k and v caches must have one shape and be contiguous");
  TORCH_CHECK(k.size(1) == q.size(1) && k.size(3) == q.size(3), "q and the caches differ in heads or head_dim");
  TORCH_CHECK(q.size(3) % kHeadDimMultiple == 0 && q.size(3) <= kMaxHeadDim && q.size(2) <= kMaxGroup,
              "head_dim must be a multiple of 16 up to 256, and at most 16 query heads per KV head");
  auto tables = block_tables.to(at::kLong).contiguous();
  auto s = starts.to(at::kLong).contiguous();
  auto e = ends.to(at::kLong).contiguous();
  const int64_t B = q.size(0), block_size = k.size(2), num_blocks = k.size(0);
  TORCH_CHECK(tables.dim() == 2 && tables.size(0) == B, "one block table row per sequence");
  TORCH_CHECK(s.numel() == B && e.numel() == B, "one start and end per sequence");
  const int64_t width = tables.size(1);
  const int64_t* tp = tables.data_ptr<int64_t>();
  const int64_t* sp = s.data_ptr<int64_t>();
  const int64_t* ep = e.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(0 <= sp[b] && sp[b] < ep[b] && ep[b] <= width * block_size,
                "each range must be non-empty and inside its block table");
    for (int64_t slot = sp[b] / block_size; slot <= (ep[b] - 1) / block_size; ++slot)
      TORCH_CHECK(0 <= tp[b * width + slot] && tp[b * width + slot] < num_blocks, "a block id is outside the cache");
  }
  q = q.contiguous();
  auto out = at::empty_like(q);
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kBFloat16,
              "paged_decode_attention supports float32 and bfloat16");
  attend_paged_blocks(q, k, v, tp, width, sp, ep, static_cast<float>(scale), out);
  return out;
}

// A decode-only step's attention for one layer, as transformers hands it over: write the new keys
// and values into the caches, then attend. One call instead of the dozen tensor operations (each a
// Python-level dispatch) it takes to do the same around paged_decode_attention.
//   query [1, heads, B, D], key and value [1, H, B, D] (any strides: transformers' transposed views)
//   write_rows [B * H] int64: the cache row (of k_cache viewed as [N * H * S, D]) of token b's head h
//       at b * H + h, as attention_metadata.write_rows builds them
//   the caches, block_tables, starts, ends and scale as paged_decode_attention takes them
//   returns [1, B, heads, D] contiguous, in query's dtype.
at::Tensor paged_decode_step(at::Tensor query, at::Tensor key, at::Tensor value, at::Tensor k_cache,
                             at::Tensor v_cache, at::Tensor write_rows, at::Tensor block_tables,
                             at::Tensor starts, at::Tensor ends, double scale) {
  TORCH_CHECK(query.dim() == 4 && key.dim() == 4 && value.dim() == 4 && query.size(0) == 1 && key.size(0) == 1 &&
                  key.sizes() == value.sizes() && key.size(2) == query.size(2) && key.size(3) == query.size(3),
              "query [1, heads, B, D] and key, value [1, kv_heads, B, D] expected");
  const int64_t heads = query.size(1), kv_heads = key.size(1), B = query.size(2), D = query.size(3);
  TORCH_CHECK(kv_heads > 0 && heads % kv_heads == 0, "the query heads must be a multiple of the KV heads");
  TORCH_CHECK(k_cache.dim() == 4 && k_cache.size(1) == kv_heads && k_cache.size(3) == D && k_cache.is_contiguous() &&
                  v_cache.sizes() == k_cache.sizes() && v_cache.is_contiguous(),
              "the k and v caches must be contiguous [N, kv_heads, S, D]");
  TORCH_CHECK(write_rows.dim() == 1 && write_rows.numel() == B * kv_heads, "one write row per token and KV head");
  const auto rows = write_rows.to(at::kLong);  // index_copy_ refuses a row outside the cache
  const int64_t cache_rows = k_cache.numel() / D;
  k_cache.view({cache_rows, D}).index_copy_(0, rows, key.select(0, 0).transpose(0, 1).reshape({B * kv_heads, D}));
  v_cache.view({cache_rows, D}).index_copy_(0, rows, value.select(0, 0).transpose(0, 1).reshape({B * kv_heads, D}));
  at::Tensor packed = query.select(0, 0).transpose(0, 1).reshape({B, kv_heads, heads / kv_heads, D});
  return paged_decode_attention(packed, k_cache, v_cache, block_tables, starts, ends, scale).view({1, B, heads, D});
}
