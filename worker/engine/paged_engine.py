"""The paged engine: scheduler + model runner + sampler behind `worker.engine_api.Engine`.

One `step()` = schedule, one forward pass over the ragged batch, sample the sequences whose
known tokens are all computed, register newly full blocks in the prefix cache, stop finished
sequences and free their blocks. Driven from one thread only (see engine_api).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence as Seq

from services.block_hash import hash_root
from services.types import FINISH_LENGTH, GenerateRequest, RequestOutput, WorkerStats
from worker.engine.block_pool import BlockEvents, BlockPool
from worker.engine.model_runner import ModelRunner
from worker.engine.scheduler import ScheduledChunk, Scheduler
from worker.engine.sequence import Sequence
from worker.engine.step_inputs import build_step_inputs
from worker.engine.stopping import finish_reason
from worker.engine_api import EngineCapacity, RequestRejected
from worker.engine_config import EngineConfig
from worker.sampling import SampledToken, Sampler, make_generator

_RATE_WINDOW_S = 10.0


class PagedEngine:
    def __init__(
        self, runner: ModelRunner, config: EngineConfig, eos_token_ids: Seq[int], max_model_len: int
    ) -> None:
        self.runner = runner
        self.config = config
        self.block_size = config.block_size
        self.max_model_len = max_model_len
        self.eos_token_ids = frozenset(eos_token_ids)
        num_blocks = runner.kv_cache.num_blocks
        self.pool = BlockPool(num_blocks, config.eviction_policy, config.cache_enabled)
        self.scheduler = Scheduler(
            self.pool, config.block_size, config.max_num_seqs, config.max_num_batched_tokens
        )
        self.sampler = Sampler(runner.vocab_size, sorted(self.eos_token_ids), runner.device, runner.argmax_kernel)
        self.capacity = EngineCapacity(config.max_num_seqs, num_blocks, config.block_size, max_model_len)
        self._sequences: dict[str, Sequence] = {}
        self._done_at_admission: list[RequestOutput] = []
        self._recent_tokens: deque[tuple[float, int]] = deque()
        self._prefix_hit_tokens = 0
        self._prompt_tokens = 0
        self._preemptions = 0

    # -- Engine protocol ------------------------------------------------------------------------
    def add_request(self, request: GenerateRequest) -> None:
        self._validate(request)
        if len(request.resume_token_ids) >= request.sampling.max_tokens:
            self._done_at_admission.append(RequestOutput(
                request.request_id, finish_reason=FINISH_LENGTH, prompt_tokens=len(request.prompt_token_ids)))
            return
        root = hash_root(self.config.model_id, request.cache_salt)
        seq = Sequence.from_request(request, root, make_generator(request.sampling.seed, self.runner.device))
        self._sequences[request.request_id] = seq
        self.scheduler.add(seq)

    def abort_request(self, request_id: str) -> None:
        seq = self._sequences.pop(request_id, None)
        if seq is not None:
            self.scheduler.remove(seq)
        self._done_at_admission = [out for out in self._done_at_admission if out.request_id != request_id]

    def has_unfinished(self) -> bool:
        return bool(self._sequences or self._done_at_admission)

    def step(self) -> list[RequestOutput]:
        outputs, self._done_at_admission = self._done_at_admission, []
        plan = self.scheduler.schedule()
        self._preemptions += len(plan.preempted)
        self._prefix_hit_tokens += plan.prefix_hit_tokens
        self._prompt_tokens += plan.admitted_prompt_tokens
        if not plan.decodes and not plan.prefills:
            return outputs
        inputs = build_step_inputs(plan, self.runner.kv_cache, self.runner.workspace, self.runner.device,
                                   self.runner.decode_kernel, self.runner.decode_step, self.runner.prefill_softmax)
        logits = self.runner.forward(inputs)
        for chunk in plan.chunks:
            chunk.seq.num_computed_tokens += chunk.num_tokens
            if self.pool.cache_enabled:
                self._register_full_blocks(chunk.seq)
        if inputs.sampled_chunks:
            rows = [chunk.seq.sampling_row for chunk in inputs.sampled_chunks]
            sampled = self.sampler.sample(logits, rows)
            outputs += self._append_tokens(inputs.sampled_chunks, sampled)
            self._recent_tokens.append((time.monotonic(), len(sampled)))
        return outputs

    def stats(self) -> WorkerStats:
        total = self.pool.num_blocks
        free = self.pool.num_free
        return WorkerStats(
            running=len(self.scheduler.running),
            waiting=len(self.scheduler.waiting),
            free_blocks=free,
            total_blocks=total,
            cached_blocks=self.pool.num_cached,
            kv_usage=(total - free) / total,
            prefix_hit_tokens=self._prefix_hit_tokens,
            prompt_tokens=self._prompt_tokens,
            tokens_per_second=self._tokens_per_second(),
            preemptions=self._preemptions,
        )

    def take_block_events(self) -> BlockEvents:
        """Block hashes cached and evicted since the last call, for the prefix index."""
        return self.pool.take_events()

    def cached_block_hashes(self) -> list[bytes]:
        """Every block hash the prefix cache holds now (for a full republish to the index)."""
        return self.pool.cached_hashes()

    # -- internals ------------------------------------------------------------------------------
    def _validate(self, request: GenerateRequest) -> None:
        prompt, params = request.prompt_token_ids, request.sampling
        if request.request_id in self._sequences:
            raise RequestRejected(f"request {request.request_id!r} is already running on this engine")
        if not prompt:
            raise RequestRejected("the prompt is empty")
        if params.max_tokens < 1:
            raise RequestRejected(f"max_tokens must be at least 1, got {params.max_tokens}")
        vocab = self.runner.vocab_size
        if min(prompt) < 0 or max(prompt) >= vocab or any(not 0 <= t < vocab for t in request.resume_token_ids):
            raise RequestRejected(f"token ids must lie in [0, {vocab})")
        total = len(prompt) + params.max_tokens
        if total > self.max_model_len:
            raise RequestRejected(
                f"prompt ({len(prompt)} tokens) + max_tokens ({params.max_tokens}) = {total} tokens exceeds "
                f"the maximum context length of {self.max_model_len} tokens"
            )
        blocks = -(-(total - 1) // self.block_size)
        if blocks > self.pool.num_blocks:
            raise RequestRejected(
                f"prompt ({len(prompt)} tokens) + max_tokens ({params.max_tokens}) needs {blocks} KV blocks of "
                f"{self.block_size} tokens, but the whole cache has {self.pool.num_blocks}"
            )

    def _register_full_blocks(self, seq: Sequence) -> None:
        num_full = seq.num_computed_tokens // self.block_size
        if len(seq.content_keys) >= num_full:
            return
        hashes = seq.full_block_hashes(self.block_size)
        size = self.block_size
        for index in range(len(seq.content_keys), num_full):
            parent = seq.content_keys[index - 1] if index else seq.hash_root
            tokens = seq.token_ids[index * size:(index + 1) * size]
            seq.content_keys.append(self.pool.register(seq.block_table[index], hashes[index], tokens, parent))

    def _append_tokens(self, chunks: list[ScheduledChunk], sampled: list[SampledToken]) -> list[RequestOutput]:
        outputs = []
        for chunk, token in zip(chunks, sampled):
            seq = chunk.seq
            seq.append_token(token.token_id)
            reason = finish_reason(seq, self.eos_token_ids, self.max_model_len)
            logprobs = [token.logprobs] if token.logprobs is not None else []
            outputs.append(RequestOutput(
                seq.request_id, [token.token_id], logprobs, reason,
                prompt_tokens=seq.num_prompt_tokens, cached_tokens=seq.num_cached_tokens))
            if reason:
                del self._sequences[seq.request_id]
                self.scheduler.remove(seq)
        return outputs

    def _tokens_per_second(self) -> float:
        now = time.monotonic()
        while self._recent_tokens and self._recent_tokens[0][0] < now - _RATE_WINDOW_S:
            self._recent_tokens.popleft()
        if not self._recent_tokens:
            return 0.0
        span = max(now - self._recent_tokens[0][0], 1e-3)
        return sum(count for _, count in self._recent_tokens) / span
