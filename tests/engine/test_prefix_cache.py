"""Prefix caching in the engine: reuse is reported, exact, salted, and safe against hash collisions."""

from __future__ import annotations

from services.block_hash import block_hashes, hash_root
from tests.engine.harness import drive, greedy_reference, request


def test_a_prompt_whose_prefix_is_cached_reuses_it_and_matches_generate(model_dir, make_engine, prompts):
    engine = make_engine()
    shared, tail_a, tail_b = prompts([40, 7, 11], seed=10)
    first = drive(engine, {0: [request("a", shared + tail_a, 8)]})
    assert first["a"].cached_tokens == 0
    second = drive(engine, {0: [request("b", shared + tail_b, 8)]})
    assert second["b"].cached_tokens == 40  # ten full blocks of 4 tokens
    assert second["b"].token_ids == greedy_reference(model_dir, shared + tail_b, 8)
    stats = engine.stats()
    assert stats.prefix_hit_tokens == 40 and stats.prompt_tokens == 47 + 51


def test_a_fully_cached_prompt_recomputes_its_last_block(model_dir, make_engine, prompts):
    engine = make_engine()
    (prompt,) = prompts([24], seed=11)
    drive(engine, {0: [request("a", prompt, 6)]})
    again = drive(engine, {0: [request("b", prompt, 6)]})
    assert again["b"].cached_tokens == 20
    assert again["b"].token_ids == greedy_reference(model_dir, prompt, 6)


def test_a_prefix_held_by_a_running_request_is_shared(model_dir, make_engine, prompts):
    engine = make_engine(max_num_batched_tokens=64)
    shared, tail_a, tail_b = prompts([32, 5, 9], seed=12)
    results = drive(engine, {0: [request("a", shared + tail_a, 20)], 3: [request("b", shared + tail_b, 10)]})
    assert results["b"].cached_tokens == 32
    assert results["a"].token_ids == greedy_reference(model_dir, shared + tail_a, 20)
    assert results["b"].token_ids == greedy_reference(model_dir, shared + tail_b, 10)


def test_with_caching_disabled_nothing_is_reused(model_dir, make_engine, prompts):
    engine = make_engine(cache_enabled=False)
    (prompt,) = prompts([30], seed=13)
    drive(engine, {0: [request("a", prompt, 5)]})
    again = drive(engine, {0: [request("b", prompt, 5)]})
    assert again["b"].cached_tokens == 0
    assert again["b"].token_ids == greedy_reference(model_dir, prompt, 5)
    assert engine.stats().cached_blocks == 0


def test_requests_with_different_cache_salts_do_not_share_blocks(make_engine, prompts):
    engine = make_engine()
    (prompt,) = prompts([30], seed=14)
    salted = request("a", prompt, 4)
    salted.cache_salt = "tenant-1"
    drive(engine, {0: [salted]})
    other = request("b", prompt, 4)
    other.cache_salt = "tenant-2"
    assert drive(engine, {0: [other]})["b"].cached_tokens == 0


def test_published_block_hashes_are_the_ones_the_scheduler_computes(make_engine, prompts):
    engine = make_engine()
    (prompt,) = prompts([18], seed=15)
    drive(engine, {0: [request("a", prompt, 3)]})
    events = engine.take_block_events()
    prompt_blocks = block_hashes(prompt, 4, hash_root("tiny", ""))
    assert events.stored[: len(prompt_blocks)] == prompt_blocks
    assert events.removed == []
    assert sorted(engine.cached_block_hashes()) == sorted(events.stored)


def test_forced_hash_collisions_never_serve_another_prompts_blocks(model_dir, make_engine, prompts, monkeypatch):
    def every_block_collides(token_ids, block_size, root):
        return [b"\x00" * 16] * (len(token_ids) // block_size)

    monkeypatch.setattr("worker.engine.sequence.block_hashes", every_block_collides)
    engine = make_engine()
    first, second = prompts([21, 21], seed=16)
    second[:4] = first[:4]  # same first block, different after it
    drive(engine, {0: [request("a", first, 6)]})
    results = drive(engine, {0: [request("b", second, 6)]})
    assert results["b"].cached_tokens == 4  # only the block whose own tokens and parent match
    assert results["b"].token_ids == greedy_reference(model_dir, second, 6)


def test_identical_prompts_arriving_together_compute_their_prefix_once(model_dir, make_engine, prompts):
    engine = make_engine(max_num_batched_tokens=32)
    (prompt,) = prompts([50], seed=17)
    results = drive(engine, {0: [request("a", prompt, 6), request("b", prompt, 6)]})
    assert results["b"].cached_tokens == 48
    assert results["a"].token_ids == results["b"].token_ids == greedy_reference(model_dir, prompt, 6)
