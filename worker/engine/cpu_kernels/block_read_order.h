// The order decode attention reads KV blocks in, and the software prefetch along that order.
#pragma once
#include <immintrin.h>
#include <algorithm>
#include <cstdint>

// Work items: a sequence's KV heads, whole or split into `parts` ranges when there are too few
// sequences to keep every thread busy. An item reads its blocks twice, all its heads' rows of a
// block together: the key blocks (scores), then the value blocks (weighted sum). A block's heads
// lie next to each other ([H, S, D]), so a block is one run of memory for the item, not H runs.
//
// Software prefetch: while reading row i of one block, row i of the block kBlocksAhead further
// along the reading order (an item's key blocks, its value blocks, the next item's key blocks, ...)
// is fetched. The hardware prefetcher alone follows a block table too late.
//
// Measured against the previous kernel, which read one (sequence, KV head) at a time with its own
// prefetch plan per dtype, on bench-135m's shapes (32 sequences, 3 KV heads of 3 query heads,
// head_dim 64, 30 layers' caches in huge pages, variants interleaved in one process, best of 7;
// /tmp/prof/kbench4.py), per decode step:
// - the block tables the engine built in a bench's third and fourth rounds: bfloat16 8.8-9.1 ->
//   7.3-8.0 ms (in a faster sitting of the VM 6.4-6.6 -> 5.4-6.0), float32 16.3 -> 16.2-16.3 ms;
//   the same float32 tables with each allocation in ascending block order (block_pool.allocate):
//   15.4-15.5 ms;
// - each sequence's blocks in order: bfloat16 8.0 -> 6.1 ms, float32 14.1 -> 11.3 ms;
// - every block at a random place: bfloat16 alike (8.9 -> 8.6 ms in that sitting, 7.0 -> 7.3 in
//   another), float32 15.7 -> 16.4 ms (slower: reading one head's part of a block let the hardware
//   fetch the next heads' parts early).
// In the engine (32 x 256-token prompts, 128 tokens out, 2 alternating pairs) the decode step went
// from 32.2-32.3 to 30.3-31.0 ms in bfloat16 and from 51.6-57.2 to 49.0-52.6 ms in float32.
// Fetching 1 or 2 blocks ahead measured alike and 3 or 4 slower; fetching into L2 rather than L1
// (_MM_HINT_T1 / T2) was 5-8% slower; fetching the values during the key pass was slower.
constexpr int64_t kBlocksAhead = 2;

template <typename T>
inline void prefetch_range(const T* first, int64_t count) {
  const char* bytes = reinterpret_cast<const char*>(first);
  for (int64_t line = 0; line < count * static_cast<int64_t>(sizeof(T)); line += 64)
    _mm_prefetch(bytes + line, _MM_HINT_T0);
}

template <typename T>
struct ReadOrder {
  const T* keys;
  const T* values;
  int64_t block_stride, head_stride, block_size;
  const int64_t* tables;
  int64_t table_width;
  const int64_t* starts;
  const int64_t* ends;
  int64_t parts, heads_per_part, heads;
  int64_t end_item;  // items [.., end_item) are this thread's

  int64_t sequence(int64_t item) const { return item / parts; }
  int64_t first_head(int64_t item) const { return item % parts * heads_per_part; }
  int64_t end_head(int64_t item) const { return std::min(first_head(item) + heads_per_part, heads); }
  int64_t first_slot(int64_t item) const { return starts[sequence(item)] / block_size; }
  int64_t block_count(int64_t item) const { return (ends[sequence(item)] - 1) / block_size - first_slot(item) + 1; }

  // The start of `item`'s `index`-th key (or value) block: its first head's row 0.
  const T* block(int64_t item, bool values_pass, int64_t index) const {
    const int64_t id = tables[sequence(item) * table_width + first_slot(item) + index];
    return (values_pass ? values : keys) + id * block_stride + first_head(item) * head_stride;
  }

  // The block `distance` places after `item`'s `index`-th key (or value) block, or nullptr.
  const T* block_after(int64_t item, bool values_pass, int64_t index, int64_t distance) const {
    int64_t target = index + distance;
    while (target >= block_count(item)) {
      target -= block_count(item);
      if (!values_pass) {
        values_pass = true;
      } else if (++item == end_item) {
        return nullptr;
      } else {
        values_pass = false;
      }
    }
    return block(item, values_pass, target);
  }

  // All of an item's rows of a block (from block()): its heads' S x D values each.
  int64_t item_span(int64_t item) const { return (end_head(item) - first_head(item)) * head_stride; }

  // Walks `item`'s key (or value) blocks in order and, in each, its heads: calls
  // visit(h, rows, ahead, position, r0, r1) with `rows` head h's row 0 of the block, `ahead` the same
  // head's row 0 in the block kBlocksAhead further along the reading order (nullptr: none), and
  // [r0, r1) the block's rows in the attended range, row r being position `position + r` of it.
  template <typename Visit>
  void for_each_block_head(int64_t item, bool values_pass, Visit visit) const {
    const int64_t b = sequence(item), h0 = first_head(item), h1 = end_head(item);
    for (int64_t i = 0; i < block_count(item); ++i) {
      const int64_t t0 = (first_slot(item) + i) * block_size;
      const int64_t r0 = std::max<int64_t>(starts[b] - t0, 0), r1 = std::min<int64_t>(ends[b] - t0, block_size);
      const T* here = block(item, values_pass, i);
      const T* ahead = block_after(item, values_pass, i, kBlocksAhead);
      for (int64_t h = h0; h < h1; ++h) {
        const int64_t head = (h - h0) * head_stride;
        visit(h, here + head, ahead ? ahead + head : nullptr, t0 - starts[b], r0, r1);
      }
    }
  }
};
