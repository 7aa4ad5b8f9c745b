"""What a client of the engine sees: admission errors, stopping rules, aborts and stats."""

from __future__ import annotations

import pytest
import torch

from tests.engine.harness import drive, greedy_reference, request
from worker.engine_api import RequestRejected


def test_requests_that_can_never_fit_are_refused_with_the_numbers(make_engine, prompts):
    engine = make_engine(num_blocks=8, max_model_len=64)
    short, long = prompts([10, 60], seed=30)
    with pytest.raises(RequestRejected, match=r"prompt \(60 tokens\) \+ max_tokens \(10\) = 70 .* 64"):
        engine.add_request(request("too-long", long, 10))
    with pytest.raises(RequestRejected, match=r"needs 10 KV blocks .* the whole cache has 8"):
        engine.add_request(request("too-big", short, 30))
    with pytest.raises(RequestRejected, match="empty"):
        engine.add_request(request("empty", [], 5))
    with pytest.raises(RequestRejected, match="token ids"):
        engine.add_request(request("bad-id", [10**7], 5))
    engine.add_request(request("ok", short, 5))
    with pytest.raises(RequestRejected, match="already"):
        engine.add_request(request("ok", short, 5))
    assert engine.stats().waiting == 1


def without_eos(model_dir, prompts, max_tokens, seed):
    """A prompt and its greedy continuation when nothing stops it."""
    (prompt,) = prompts([12], seed=seed)
    return prompt, greedy_reference(model_dir, prompt, max_tokens, stop_at_eos=False)


def test_a_stop_token_ends_the_output_with_that_token(model_dir, make_engine, prompts):
    prompt, expected = without_eos(model_dir, prompts, 10, seed=31)
    stop_id = expected[3]
    results = drive(make_engine(eos_token_ids=[]), {0: [request("s", prompt, 10, stop_token_ids=[stop_id])]})
    first = expected.index(stop_id)
    assert results["s"].token_ids == expected[: first + 1]
    assert results["s"].finish_reason == "stop"


def test_eos_stops_unless_ignored(model_dir, make_engine, prompts):
    prompt, expected = without_eos(model_dir, prompts, 10, seed=32)
    eos = expected[2]
    engine = make_engine(eos_token_ids=[eos])
    stopped = drive(engine, {0: [request("eos", prompt, 10)]})["eos"]
    assert stopped.token_ids == expected[: expected.index(eos) + 1] and stopped.finish_reason == "stop"
    ignored = drive(engine, {0: [request("ignore", prompt, 10, ignore_eos=True)]})["ignore"]
    assert ignored.token_ids == expected and ignored.finish_reason == "length"


def test_min_tokens_holds_back_eos_and_stop_tokens(model_dir, make_engine, prompts):
    prompt, expected = without_eos(model_dir, prompts, 10, seed=33)
    first = expected[0]
    results = drive(make_engine(eos_token_ids=[first]), {0: [request("m", prompt, 10, min_tokens=4,
                                                                       stop_token_ids=[expected[1]])]})
    tokens = results["m"].token_ids
    assert len(tokens) >= 5
    assert first not in tokens[:4] and expected[1] not in tokens[:4]


def test_max_tokens_counts_resumed_tokens(model_dir, make_engine, prompts):
    prompt, expected = without_eos(model_dir, prompts, 5, seed=34)
    engine = make_engine(eos_token_ids=[])
    partial = request("partial", prompt, 5)
    partial.resume_token_ids = expected[:2]
    done = request("done", prompt, 2)
    done.resume_token_ids = expected[:2]
    results = drive(engine, {0: [partial, done]})
    assert results["partial"].token_ids == expected[2:] and results["partial"].finish_reason == "length"
    assert results["done"].token_ids == [] and results["done"].finish_reason == "length"


def test_abort_stops_output_and_frees_every_block(make_engine, prompts):
    engine = make_engine(max_num_seqs=1, eos_token_ids=[])
    running, waiting = prompts([20, 20], seed=35)
    engine.add_request(request("running", running, 50))
    engine.add_request(request("waiting", waiting, 50))
    engine.step()
    engine.step()
    assert engine.stats().running == 1 and engine.stats().free_blocks < engine.capacity.num_blocks
    engine.abort_request("running")
    engine.abort_request("waiting")
    engine.abort_request("never-seen")
    assert not engine.has_unfinished()
    assert engine.step() == []
    assert engine.stats().free_blocks == engine.capacity.num_blocks


def test_stats_follow_the_work(make_engine, prompts):
    engine = make_engine(max_num_seqs=2, eos_token_ids=[])
    batch = prompts([10, 11, 12, 13], seed=36)
    for index, prompt in enumerate(batch):
        engine.add_request(request(f"r{index}", prompt, 8))
    engine.step()
    busy = engine.stats()
    assert (busy.running, busy.waiting) == (2, 2)
    assert 0 < busy.kv_usage < 1 and busy.free_blocks < busy.total_blocks
    while engine.has_unfinished():
        engine.step()
    idle = engine.stats()
    assert (idle.running, idle.waiting, idle.kv_usage) == (0, 0, 0.0)
    assert idle.prompt_tokens == sum(map(len, batch))
    assert idle.cached_blocks > 0 and idle.tokens_per_second > 0


def test_bfloat16_keeps_weights_and_cache_in_bfloat16_and_agrees_with_float32(model_dir, make_engine, prompts):
    engine = make_engine(dtype="bfloat16", eos_token_ids=[])
    assert engine.runner.kv_cache.keys[0].dtype == torch.bfloat16
    assert next(engine.runner.model.parameters()).dtype == torch.bfloat16
    batch = prompts([20, 9, 31, 14], seed=37)
    results = drive(engine, {0: [request(f"r{i}", prompt, 8) for i, prompt in enumerate(batch)]})
    assert all(len(result.token_ids) == 8 for result in results.values())
    # Rounding may flip a near tie, so not every token must agree; the first ones almost always do.
    first_tokens_agreeing = sum(
        results[f"r{i}"].token_ids[0] == greedy_reference(model_dir, prompt, 8, stop_at_eos=False)[0]
        for i, prompt in enumerate(batch)
    )
    assert first_tokens_agreeing >= 3
