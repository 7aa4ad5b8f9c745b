"""The slice of worker settings an engine needs, independent of how settings are read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class EngineConfig:
    device: str = "cpu"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_model_len: int | None = None  # None: the model config's max_position_embeddings
    max_num_seqs: int = 64  # sequences running at once
    max_num_batched_tokens: int = 2048  # per-step token budget (chunked prefill fills what decodes leave)
    cache_enabled: bool = True  # prefix caching: reuse full blocks by content hash
    cache_size_mb: int = 512  # KV cache memory budget
    block_size: int = 16
    eviction_policy: Literal["lru", "lfu", "fifo"] = "lru"
    cpu_kernels: bool = True  # the compiled AVX-512 decode attention when built (else torch SDPA)
    packed_weights: bool = True  # CPU linears on weights pre-packed for oneDNN (else F.linear)
    model_id: str = ""  # served model name; part of the prefix-hash root
