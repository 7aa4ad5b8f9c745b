"""The engine's step scheduler on its own: budgets, chunked prefill, preemption and prefix reuse."""

from __future__ import annotations

import itertools

from services.block_hash import hash_root
from services.types import GenerateRequest, SamplingParams
from worker.engine.block_pool import BlockPool
from worker.engine.scheduler import Scheduler, SchedulerOutput
from worker.engine.sequence import Sequence

SIZE = 4
ROOT = hash_root("m")


_distinct_starts = itertools.count(1000, 1000)


def make_seq(name: str, prompt_len: int, first_token: int | None = None) -> Sequence:
    """A sequence whose prompt shares no block with any other unless `first_token` says so."""
    start = next(_distinct_starts) if first_token is None else first_token
    prompt = list(range(start, start + prompt_len))
    request = GenerateRequest(name, "m", prompt, SamplingParams(max_tokens=100))
    return Sequence.from_request(request, ROOT, None)


def finish_step(scheduler: Scheduler, plan: SchedulerOutput) -> None:
    """What the engine does after the forward pass: count computed tokens, append a sampled token."""
    for chunk in plan.chunks:
        complete = chunk.completes_sequence
        chunk.seq.num_computed_tokens += chunk.num_tokens
        if complete:
            chunk.seq.append_token(7)


def register_blocks(pool: BlockPool, seq: Sequence) -> None:
    hashes = seq.full_block_hashes(SIZE)
    parent = ROOT
    for index in range(seq.num_computed_tokens // SIZE):
        tokens = seq.token_ids[index * SIZE:(index + 1) * SIZE]
        parent = pool.register(seq.block_table[index], hashes[index], tokens, parent)


def scheduler_with(num_blocks=64, max_num_seqs=8, budget=32) -> Scheduler:
    return Scheduler(BlockPool(num_blocks), SIZE, max_num_seqs, budget)


def test_a_long_prompt_is_split_across_steps_and_decodes_get_their_token_every_step():
    scheduler = scheduler_with(budget=10)
    decoders = [make_seq(f"d{i}", 3) for i in range(3)]
    for seq in decoders:
        scheduler.add(seq)
    finish_step(scheduler, scheduler.schedule())  # the three 3-token prompts: 9 tokens
    long = make_seq("long", 40)
    scheduler.add(long)
    steps = 0
    while long.num_computed_tokens < 40:
        plan = scheduler.schedule()
        assert [chunk.seq for chunk in plan.decodes] == decoders
        assert plan.num_tokens <= 10
        assert [chunk.num_tokens for chunk in plan.prefills] == [min(7, 40 - long.num_computed_tokens)]
        finish_step(scheduler, plan)
        steps += 1
    assert steps == 6 and len(long.output_token_ids) == 1


def test_a_prefill_earlier_in_the_queue_leaves_a_token_for_each_later_decode():
    scheduler = scheduler_with(budget=8)
    pool = scheduler.pool
    long = make_seq("long", 30)  # admitted earlier, 8 tokens prefilled so far
    long.block_table, long.num_computed_tokens = pool.allocate(2), 8
    decoder = make_seq("decoder", 2)  # admitted after it, prompt done, one token to compute
    decoder.append_token(7)
    decoder.block_table, decoder.num_computed_tokens = pool.allocate(1), 2
    scheduler.running = [long, decoder]
    plan = scheduler.schedule()
    assert [(c.seq, c.num_tokens) for c in plan.prefills] == [(long, 7)]
    assert [(c.seq, c.num_tokens) for c in plan.decodes] == [(decoder, 1)]


def test_a_waiting_request_is_admitted_only_with_budget_left_after_running_ones():
    scheduler = scheduler_with(budget=8)
    long, short = make_seq("long", 30), make_seq("short", 2)
    scheduler.add(long)
    scheduler.add(short)
    plan = scheduler.schedule()
    assert [c.seq for c in plan.chunks] == [long] and list(scheduler.waiting) == [short]


def test_no_more_than_max_num_seqs_run_at_once():
    scheduler = scheduler_with(max_num_seqs=2)
    for index in range(4):
        scheduler.add(make_seq(f"s{index}", 3))
    plan = scheduler.schedule()
    assert len(plan.chunks) == 2 and len(scheduler.running) == 2 and len(scheduler.waiting) == 2


def test_when_blocks_run_out_the_newest_running_sequence_is_preempted_and_requeued_first():
    scheduler = scheduler_with(num_blocks=6)
    oldest, middle, newest = make_seq("a", 8), make_seq("b", 4), make_seq("c", 4)
    for seq in (oldest, middle, newest):
        scheduler.add(seq)
    finish_step(scheduler, scheduler.schedule())  # 2 + 1 + 1 blocks, all full; each got a token
    waiting = make_seq("w", 3)
    scheduler.add(waiting)
    plan = scheduler.schedule()  # each needs one more block: 3 more, only 2 free
    assert plan.preempted == [newest]
    assert [chunk.seq for chunk in plan.decodes] == [oldest, middle]
    assert list(scheduler.waiting) == [newest, waiting]
    assert newest.block_table == [] and newest.num_computed_tokens == 0
    assert newest.token_ids[-1] == 7  # what it generated is kept and will be recomputed
    assert scheduler.pool.num_free == 1  # its block went back; nothing was admitted in a preempting step


def test_a_sequence_that_cannot_grow_even_alone_preempts_itself():
    scheduler = scheduler_with(num_blocks=2)
    seq = make_seq("a", 8)
    scheduler.add(seq)
    finish_step(scheduler, scheduler.schedule())
    plan = scheduler.schedule()
    assert plan.preempted == [seq] and plan.chunks == [] and scheduler.pool.num_free == 2


def test_admission_waits_at_the_head_of_the_queue_until_blocks_are_free():
    scheduler = scheduler_with(num_blocks=3)
    scheduler.add(make_seq("big", 16))
    scheduler.add(make_seq("small", 2))
    plan = scheduler.schedule()
    assert plan.chunks == [] and len(scheduler.waiting) == 2


def test_admission_reuses_cached_prefix_blocks_with_shared_references():
    scheduler = scheduler_with()
    first = make_seq("first", 10, first_token=100)
    scheduler.add(first)
    finish_step(scheduler, scheduler.schedule())
    register_blocks(scheduler.pool, first)
    second = make_seq("second", 13, first_token=100)  # same first 10 tokens
    scheduler.add(second)
    plan = scheduler.schedule()
    assert second.block_table[:2] == first.block_table[:2]
    assert [scheduler.pool.blocks[b].ref_count for b in first.block_table[:2]] == [2, 2]
    assert second.num_cached_tokens == 8 and plan.prefix_hit_tokens == 8
    prefill = plan.prefills[0]
    assert (prefill.seq, prefill.start, prefill.num_tokens) == (second, 8, 5)


def test_a_prefix_still_being_computed_is_waited_for_not_computed_twice():
    scheduler = scheduler_with(budget=8)
    first, twin, other = make_seq("first", 14, 100), make_seq("twin", 14, 100), make_seq("other", 3)
    for seq in (first, twin, other):
        scheduler.add(seq)
    plan = scheduler.schedule()
    assert [c.seq for c in plan.chunks] == [first]  # the budget is gone; twin and other wait
    finish_step(scheduler, plan)
    register_blocks(scheduler.pool, first)
    plan = scheduler.schedule()  # first's last 6 tokens; twin's 3rd block is still being computed
    assert [c.seq for c in plan.chunks] == [first, other] and list(scheduler.waiting) == [twin]
    finish_step(scheduler, plan)
    register_blocks(scheduler.pool, first)
    plan = scheduler.schedule()
    assert twin.num_cached_tokens == 12
    assert [(c.seq, c.start, c.num_tokens) for c in plan.prefills] == [(twin, 12, 2)]
