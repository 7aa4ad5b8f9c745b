"""Per-step scheduling inside one engine: which sequences compute how many tokens this step.

Iteration-level continuous batching as in Orca / vLLM v1: there are no prefill and decode phases,
only sequences with some tokens not yet computed. Each step:
1. running sequences, oldest first, get their uncomputed tokens within the token budget, except
   that one token stays reserved for every later running sequence with a single token to compute,
   so a long prefill chunk never starves decodes;
2. when the blocks for a sequence's chunk cannot be had, the newest running sequence is preempted
   (its blocks freed, its state reset to recompute from scratch, put back at the front of the
   waiting queue) until they can; if the newest is the sequence itself, it is preempted;
3. if nothing was preempted, waiting sequences are admitted in order while budget, sequence slots
   and blocks last; an admission first takes the longest cached prefix of full blocks. A waiting
   sequence whose next uncached block is one a running prefill is still computing stays waiting
   (keeping its place) until that block is cached: shared prefixes are computed once.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from services.block_hash import BlockHash
from worker.engine.block_pool import BlockPool
from worker.engine.sequence import Sequence


@dataclass
class ScheduledChunk:
    """`num_tokens` tokens of `seq`, from position `start`, are computed this step."""

    seq: Sequence
    start: int
    num_tokens: int

    @property
    def completes_sequence(self) -> bool:
        """After this chunk every known token is computed, so the next one gets sampled."""
        return self.start + self.num_tokens == self.seq.num_tokens


@dataclass
class SchedulerOutput:
    """One step's plan; single-token chunks (decodes) come first, then longer (prefill) chunks."""

    decodes: list[ScheduledChunk] = field(default_factory=list)
    prefills: list[ScheduledChunk] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    prefix_hit_tokens: int = 0  # cached tokens reused by first admissions this step
    admitted_prompt_tokens: int = 0  # prompt tokens of first admissions this step

    @property
    def chunks(self) -> list[ScheduledChunk]:
        return self.decodes + self.prefills

    @property
    def num_tokens(self) -> int:
        return len(self.decodes) + sum(chunk.num_tokens for chunk in self.prefills)


class Scheduler:
    def __init__(self, pool: BlockPool, block_size: int, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        self.pool = pool
        self.block_size = block_size
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def remove(self, seq: Sequence) -> None:
        """Take `seq` out (finished or aborted) and free its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        else:
            self.waiting.remove(seq)
        self.pool.free(seq.release_blocks())

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self._schedule_running(out)
        if not out.preempted:
            self._admit_waiting(out, budget)
        return out

    def _schedule_running(self, out: SchedulerOutput) -> int:
        budget = self.max_num_batched_tokens
        decodes_after = sum(1 for seq in self.running if seq.num_uncomputed_tokens == 1)
        index = 0
        while index < len(self.running):
            seq = self.running[index]
            wanted = seq.num_uncomputed_tokens
            if wanted == 1:
                decodes_after -= 1
            num_tokens = min(wanted, budget - decodes_after)
            if num_tokens <= 0:
                index += 1
                continue
            needed = self._blocks_needed(seq, num_tokens)
            while not self.pool.can_allocate(needed) and self.running[-1] is not seq:
                victim = self.running[-1]
                if victim.num_uncomputed_tokens == 1:
                    decodes_after -= 1
                self._preempt(victim, out)
            if not self.pool.can_allocate(needed):
                self._preempt(seq, out)
                break
            self._add_chunk(out, seq, num_tokens, needed)
            budget -= num_tokens
            index += 1
        return budget

    def _admit_waiting(self, out: SchedulerOutput, budget: int) -> None:
        deferred: list[Sequence] = []
        in_flight = self._in_flight_hashes() if self.pool.cache_enabled and self.waiting else set()
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            hit_blocks = self._cached_prefix(seq)
            if in_flight and self._next_block_in_flight(seq, len(hit_blocks), in_flight):
                deferred.append(self.waiting.popleft())
                continue
            num_cached = len(hit_blocks) * self.block_size
            num_tokens = min(seq.num_tokens - num_cached, budget)
            needed = -(-(num_cached + num_tokens) // self.block_size) - len(hit_blocks)
            hits_now_free = sum(1 for block in hit_blocks if self.pool.blocks[block].ref_count == 0)
            if needed > self.pool.num_free - hits_now_free:
                break
            self.waiting.popleft()
            self.pool.acquire(hit_blocks)
            seq.block_table = list(hit_blocks)
            seq.content_keys = [self.pool.blocks[block].content_key for block in hit_blocks]
            seq.num_computed_tokens = num_cached
            if not seq.admitted:
                seq.admitted = True
                seq.num_cached_tokens = min(num_cached, seq.num_prompt_tokens)
                out.prefix_hit_tokens += seq.num_cached_tokens
                out.admitted_prompt_tokens += seq.num_prompt_tokens
            self.running.append(seq)
            self._add_chunk(out, seq, num_tokens, needed)
            budget -= num_tokens
            if self.pool.cache_enabled:
                in_flight.update(self._uncomputed_block_hashes(seq))
        self.waiting.extendleft(reversed(deferred))

    def _in_flight_hashes(self) -> set[BlockHash]:
        """Hashes of the full blocks that running sequences have yet to compute."""
        in_flight: set[BlockHash] = set()
        for seq in self.running:
            if seq.num_uncomputed_tokens > 1:
                in_flight.update(self._uncomputed_block_hashes(seq))
        return in_flight

    def _uncomputed_block_hashes(self, seq: Sequence) -> list[BlockHash]:
        return seq.full_block_hashes(self.block_size)[seq.num_computed_tokens // self.block_size:]

    def _next_block_in_flight(self, seq: Sequence, num_hit_blocks: int, in_flight: set[BlockHash]) -> bool:
        hashes = seq.full_block_hashes(self.block_size)
        return num_hit_blocks < len(hashes) and hashes[num_hit_blocks] in in_flight

    def _cached_prefix(self, seq: Sequence) -> list[int]:
        """Cached blocks to reuse, leaving at least one token to compute (its logits are needed)."""
        if not self.pool.cache_enabled:
            return []
        hashes = seq.full_block_hashes(self.block_size)
        hit = self.pool.match_prefix(seq.hash_root, hashes, seq.token_ids, self.block_size)
        if len(hit) * self.block_size == seq.num_tokens:
            hit.pop()
        return hit

    def _blocks_needed(self, seq: Sequence, num_tokens: int) -> int:
        total = seq.num_computed_tokens + num_tokens
        return -(-total // self.block_size) - len(seq.block_table)

    def _add_chunk(self, out: SchedulerOutput, seq: Sequence, num_tokens: int, new_blocks: int) -> None:
        if new_blocks > 0:
            seq.block_table += self.pool.allocate(new_blocks)
        chunk = ScheduledChunk(seq, seq.num_computed_tokens, num_tokens)
        (out.decodes if num_tokens == 1 else out.prefills).append(chunk)

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        self.running.remove(seq)
        self.pool.free(seq.release_blocks())
        self.waiting.appendleft(seq)
        out.preempted.append(seq)
