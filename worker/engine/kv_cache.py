"""The paged KV cache: per layer, one key and one value tensor of fixed-size token blocks.

Shapes: `[num_blocks, num_kv_heads, block_size, head_dim]` each, allocated once, in the model's
dtype, on the model's device. Token slot `s` (as in a slot mapping) is block `s // block_size`,
offset `s % block_size`. Heads come before positions so that gathering a batch's block tables
row by row (one row = one head of one block, `block_size * head_dim` contiguous values) lands
directly in the `[batch, kv_heads, context, head_dim]` layout attention reads, with no transpose
copy: on a CPU, decode attention is bound by these copies, not by arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from worker.engine.allocator import zeros_in_huge_pages

_MIB = 1 << 20


@dataclass(frozen=True)
class KVShape:
    num_layers: int
    num_kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, model_config) -> KVShape:
        text_config = text_config_of(model_config)
        heads = text_config.num_attention_heads
        head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // heads
        kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
        return cls(text_config.num_hidden_layers, kv_heads, head_dim)

    def bytes_per_block(self, block_size: int, dtype: torch.dtype) -> int:
        element = torch.empty((), dtype=dtype).element_size()
        return 2 * self.num_layers * block_size * self.num_kv_heads * self.head_dim * element


def text_config_of(model_config):
    """The language model's config (a multimodal config nests it)."""
    return model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config


class KVCache:
    def __init__(self, shape: KVShape, num_blocks: int, block_size: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        self.shape = shape
        self.num_blocks = num_blocks
        self.block_size = block_size
        dims = (num_blocks, shape.num_kv_heads, block_size, shape.head_dim)
        numel = 2 * shape.num_layers * math.prod(dims)
        # One allocation for every layer's keys and values; on a CPU, in huge pages (allocator.py).
        storage = (zeros_in_huge_pages(numel, dtype) if torch.device(device).type == "cpu"
                   else torch.zeros(numel, dtype=dtype, device=device))
        keys, values = storage.view(2, shape.num_layers, *dims)
        self.keys, self.values = list(keys), list(values)  # each layer's tensor is contiguous
        self._gather_space = torch.empty(0, dtype=dtype, device=device)

    def gather_buffers(self, num_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Two `[num_rows, block_size * head_dim]` scratch tensors for gathered keys and values.

        They are reused by every layer and every step (grown when too small): allocating tens of
        megabytes per layer costs more in page faults than the copy into them.
        """
        row = self.block_size * self.shape.head_dim
        if self._gather_space.numel() < 2 * num_rows * row:
            self._gather_space = torch.empty(2 * num_rows * row, dtype=self._gather_space.dtype,
                                             device=self._gather_space.device)
        used = self._gather_space[: 2 * num_rows * row].view(2, num_rows, row)
        return used[0], used[1]

    @property
    def num_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)


def blocks_for_budget(shape: KVShape, block_size: int, dtype: torch.dtype, device: torch.device,
                      cache_size_mb: int, free_memory_fraction: float = 0.9) -> int:
    """How many blocks fit in `cache_size_mb`, or, when it is 0 on CUDA, in a fraction of free memory."""
    per_block = shape.bytes_per_block(block_size, dtype)
    if cache_size_mb > 0:
        budget = cache_size_mb * _MIB
    elif device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = int(free * free_memory_fraction)
    else:
        raise ValueError("cache_size_mb must be positive on a CPU device")
    num_blocks = budget // per_block
    if num_blocks < 1:
        raise ValueError(
            f"a KV cache budget of {budget / _MIB:.1f} MiB holds no block of {block_size} tokens "
            f"({per_block / _MIB:.2f} MiB each for {shape.num_layers} layers)"
        )
    return num_blocks
