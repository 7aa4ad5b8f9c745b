"""The worker's paged engine: paged KV cache, continuous batching, prefix caching.

`create_engine(model_dir, config)` returns a `worker.engine_api.Engine`. Importing this package
is cheap; torch and transformers load on the first `create_engine` call, so the pure parts
(block pool, eviction, scheduler) can be used and tested without them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from worker.engine_config import EngineConfig
from worker.model_source import eos_token_ids as eos_token_ids_of
from worker.model_source import model_context_length

if TYPE_CHECKING:
    from worker.engine.paged_engine import PagedEngine


def create_engine(
    model_dir: str, config: EngineConfig, eos_token_ids: Sequence[int] | None = None, num_blocks: int | None = None
) -> PagedEngine:
    """Load the causal LM in `model_dir` and allocate its KV cache.

    `eos_token_ids` default to the model's generation_config (else config) eos_token_id;
    the maximum context defaults to the model's (`model_source.model_context_length`). `num_blocks`, when
    given, sizes the KV cache exactly instead of `config.cache_size_mb` (tests, benchmarks).
    """
    from worker.engine.model_runner import ModelRunner
    from worker.engine.paged_engine import PagedEngine

    runner = ModelRunner(model_dir, config, num_blocks)
    if eos_token_ids is None:
        eos_token_ids = eos_token_ids_of(Path(model_dir))
    max_model_len = config.max_model_len or model_context_length(Path(model_dir))
    return PagedEngine(runner, config, eos_token_ids, max_model_len)


__all__ = ["create_engine"]
