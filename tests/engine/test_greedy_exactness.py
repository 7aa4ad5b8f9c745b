"""Greedy output is exactly transformers' `generate(do_sample=False)`, whatever the engine does meanwhile.

Each test runs for the Llama and the Qwen2 tiny model (see conftest), in float32. The first test
keeps the model's EOS (outputs end where generate's do); the others run without EOS so that every
request reaches max_tokens and the scenario (chunking, preemption, resumption) surely happens.
"""

from __future__ import annotations

import pytest

from tests.engine.harness import drive, greedy_reference, request

MIXED_LENGTHS = [3, 70, 9, 41, 120, 17, 5, 88, 33, 1, 57, 26, 101, 12, 64, 8]
MIXED_MAX_TOKENS = [12, 5, 20, 9, 16, 7, 24, 11, 6, 18, 10, 14, 8, 22, 13, 15]


def assert_matches_reference(model_dir, prompts, max_tokens, results, stop_at_eos=False):
    for index, (prompt, limit) in enumerate(zip(prompts, max_tokens)):
        expected = greedy_reference(model_dir, prompt, limit, stop_at_eos)
        assert results[f"r{index}"].token_ids == expected, f"request r{index} (prompt of {len(prompt)} tokens)"


@pytest.mark.parametrize("fast_paths", [True, False], ids=["kernels-and-packed-weights", "torch-ops"])
def test_sixteen_concurrent_requests_arriving_over_time(model_dir, make_engine, prompts, fast_paths):
    engine = make_engine(max_num_seqs=8, max_num_batched_tokens=96, cpu_kernels=fast_paths,
                         packed_weights=fast_paths)
    batch = prompts(MIXED_LENGTHS, seed=1)
    arrival_steps = [0, 0, 0, 0, 1, 1, 2, 3, 5, 5, 8, 9, 13, 14, 20, 27]
    arrivals: dict[int, list] = {}
    for index, (prompt, limit, step) in enumerate(zip(batch, MIXED_MAX_TOKENS, arrival_steps)):
        arrivals.setdefault(step, []).append(request(f"r{index}", prompt, limit))
    results = drive(engine, arrivals)
    assert_matches_reference(model_dir, batch, MIXED_MAX_TOKENS, results, stop_at_eos=True)
    for index, prompt in enumerate(batch):
        assert results[f"r{index}"].finish_reason in ("stop", "length")
        assert results[f"r{index}"].prompt_tokens == len(prompt)
    assert engine.stats().running == 0 and engine.stats().free_blocks == engine.capacity.num_blocks


def test_prompt_longer_than_the_step_budget_is_prefilled_in_chunks_without_stalling_decodes(
    model_dir, make_engine, prompts
):
    engine = make_engine(max_num_batched_tokens=16, eos_token_ids=[])
    short_a, short_b, long_prompt = prompts([5, 7, 150], seed=2)
    results = drive(engine, {
        0: [request("r0", short_a, 30), request("r1", short_b, 30)],
        3: [request("r2", long_prompt, 6)],
    })
    assert_matches_reference(model_dir, [short_a, short_b, long_prompt], [30, 30, 6], results)
    # While the 150-token prompt was prefilled (at most 14 tokens a step), both decodes kept going.
    first_long_output = results["r2"].steps_with_output[0]
    assert first_long_output >= 3 + 150 // 16
    for decode in ("r0", "r1"):
        steps = results[decode].steps_with_output
        during_prefill = [s for s in range(4, first_long_output) if s <= steps[-1]]
        assert all(s in steps for s in during_prefill)


def test_preemption_when_blocks_run_out_leaves_output_unchanged(model_dir, make_engine, prompts):
    # 24 blocks of 4 tokens: six requests needing up to 15 blocks each cannot all stay resident.
    engine = make_engine(num_blocks=24, max_num_seqs=6, max_num_batched_tokens=64, eos_token_ids=[])
    batch = prompts([20, 31, 14, 26, 9, 22], seed=3)
    limits = [30, 25, 40, 20, 35, 28]
    results = drive(engine, {0: [request(f"r{i}", p, n) for i, (p, n) in enumerate(zip(batch, limits))]})
    assert engine.stats().preemptions > 0
    assert_matches_reference(model_dir, batch, limits, results)
    assert engine.stats().free_blocks == 24


def test_resumed_request_continues_exactly_where_the_interrupted_one_was(model_dir, make_engine, prompts):
    (prompt,) = prompts([23], seed=4)
    expected = greedy_reference(model_dir, prompt, 20, stop_at_eos=False)
    resumed = request("r0", prompt, 20)
    resumed.resume_token_ids = expected[:7]
    results = drive(make_engine(eos_token_ids=[]), {0: [resumed]})
    assert results["r0"].token_ids == expected[7:]
    assert results["r0"].prompt_tokens == len(prompt)
