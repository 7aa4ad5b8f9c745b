"""The bench's workload generators: exact lengths, prefix sharing, growing histories, reproducible seeds."""

from __future__ import annotations

import random

import pytest

from tests.bench.prompt_tokens import load_tokenizer, prompt_text, round_trip_pool
from tests.bench.workloads import LengthRange, multi_turn_workload, random_workload, shared_prefix_workload

POOL = list(range(100, 400))


def _random(seed: int = 7, n: int = 50, inp: str = "32-1024", out: str = "16-256"):
    return random_workload(num_requests=n, input_len=LengthRange.parse(inp), output_len=LengthRange.parse(out),
                           pool=POOL, seed=seed)


def test_length_range_parses_fixed_and_ranges_and_rejects_inverted():
    assert LengthRange.parse("256") == LengthRange(256, 256)
    assert LengthRange.parse("32-1024") == LengthRange(32, 1024)
    with pytest.raises(ValueError):
        LengthRange.parse("10-5")


def test_random_has_the_asked_count_lengths_within_ranges_and_tokens_from_the_pool():
    workload = _random()
    requests = workload.requests
    assert len(requests) == 50 and all(len(s.requests) == 1 for s in workload.sessions)
    assert all(32 <= len(r.prompt_ids) <= 1024 and 16 <= r.max_tokens <= 256 for r in requests)
    assert len({len(r.prompt_ids) for r in requests}) > 10, "lengths should vary over the range"
    assert set().union(*(r.prompt_ids for r in requests)) <= set(POOL)
    assert workload.ideal_cached_share == 0.0


def test_random_fixed_lengths_are_exact():
    requests = _random(inp="256", out="128").requests
    assert {len(r.prompt_ids) for r in requests} == {256} and {r.max_tokens for r in requests} == {128}


def test_same_seed_reproduces_and_other_seed_differs():
    assert _random(seed=3) == _random(seed=3)
    assert _random(seed=3).requests != _random(seed=4).requests
    shared = dict(num_requests=20, groups=4, prefix_len=64, suffix_len=8, output_len=LengthRange(4, 4), pool=POOL)
    assert shared_prefix_workload(**shared, seed=1) == shared_prefix_workload(**shared, seed=1)
    assert shared_prefix_workload(**shared, seed=1) != shared_prefix_workload(**shared, seed=2)


def test_shared_prefix_groups_share_exactly_their_prefix_and_arrive_shuffled():
    groups, prefix, suffix, n = 4, 64, 8, 40
    workload = shared_prefix_workload(num_requests=n, groups=groups, prefix_len=prefix, suffix_len=suffix,
                                      output_len=LengthRange(32, 32), pool=POOL, seed=5)
    requests = workload.requests
    assert len(requests) == n and all(len(r.prompt_ids) == prefix + suffix for r in requests)
    prefixes = [r.prompt_ids[:prefix] for r in requests]
    distinct = list(dict.fromkeys(prefixes))
    assert len(distinct) == groups
    assert sorted(prefixes.count(p) for p in distinct) == [n // groups] * groups
    assert len({r.prompt_ids[prefix:] for r in requests}) == n, "suffixes are each request's own"
    order = [distinct.index(p) for p in prefixes]
    assert order != sorted(order) and order != [i % groups for i in range(n)]


def test_shared_prefix_ideal_share_counts_every_repeat_of_a_prefix():
    groups, prefix, suffix, n = 4, 64, 8, 40
    workload = shared_prefix_workload(num_requests=n, groups=groups, prefix_len=prefix, suffix_len=suffix,
                                      output_len=LengthRange(1, 1), pool=POOL, seed=5)
    first_seen = set()
    for request in workload.requests:
        group = request.prompt_ids[:prefix]
        assert request.reusable_prefix == (prefix if group in first_seen else 0)
        first_seen.add(group)
    assert workload.ideal_cached_share == pytest.approx((n - groups) * prefix / (n * (prefix + suffix)))


def test_multi_turn_history_grows_by_reply_and_user_message_each_turn():
    workload = multi_turn_workload(num_requests=10, turns=4, first_len=LengthRange(50, 50),
                                   user_len=LengthRange(20, 20), reply_len=10, output_len=LengthRange(8, 8),
                                   pool=POOL, seed=9)
    assert [len(s.requests) for s in workload.sessions] == [4, 4, 2]
    for session in workload.sessions:
        previous = ()
        for turn, request in enumerate(session.requests):
            assert len(request.prompt_ids) == 50 + turn * 30
            assert request.prompt_ids[:len(previous)] == previous
            assert request.reusable_prefix == len(previous)
            previous = request.prompt_ids
    firsts = [s.requests[0].prompt_ids for s in workload.sessions]
    assert len(set(firsts)) == len(firsts), "conversations do not share their openings"


def test_prompts_keep_their_exact_tokens_through_text(tiny_llama_dir):
    """transformers serve tokenizes the text it is sent as below; it must get the ids Ferrum gets."""
    from transformers import AutoTokenizer

    tokenizer = load_tokenizer(tiny_llama_dir)
    served_tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    pool = round_trip_pool(tokenizer)
    rng = random.Random(0)
    for length in (1, 17, 256, 1000):
        ids = [rng.choice(pool) for _ in range(length)]
        assert served_tokenizer(prompt_text(tokenizer, ids))["input_ids"] == ids
