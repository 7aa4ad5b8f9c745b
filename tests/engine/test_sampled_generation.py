"""Sampling through the engine: seeds are reproducible whatever shares the batch; logprobs flow out."""

from __future__ import annotations

from tests.engine.harness import drive, greedy_reference, request

SEEDED = dict(temperature=0.9, top_p=0.95, top_k=50, seed=1234)


def test_a_seeded_request_gives_the_same_tokens_in_any_batch_company(make_engine, prompts):
    prompt, *others = prompts([19, 33, 7, 50, 12, 26], seed=20)
    alone = drive(make_engine(eos_token_ids=[]), {0: [request("seeded", prompt, 16, **SEEDED)]})
    alone = alone["seeded"].token_ids

    companions = [
        request("greedy", others[0], 12),
        request("random", others[1], 20, temperature=1.0),
        request("other-seed", others[2], 9, temperature=0.7, seed=99),
        request("penalised", others[3], 14, temperature=0.8, repetition_penalty=1.3, presence_penalty=0.5),
    ]
    crowded = drive(make_engine(max_num_batched_tokens=24, eos_token_ids=[]), {
        0: companions[:2], 2: [request("seeded", prompt, 16, **SEEDED)], 3: companions[2:],
    })
    assert crowded["seeded"].token_ids == alone

    # Preempted and recomputed half-way: still the same draws.
    tight = make_engine(num_blocks=16, max_num_seqs=4, eos_token_ids=[])
    squeezed = drive(tight, {0: [request("seeded", prompt, 16, **SEEDED), request("x", others[4], 30),
                                 request("y", others[3], 30, temperature=1.0)]})
    assert tight.stats().preemptions > 0
    assert squeezed["seeded"].token_ids == alone


def test_top_k_one_equals_greedy(model_dir, make_engine, prompts):
    (prompt,) = prompts([15], seed=21)
    results = drive(make_engine(), {0: [request("k1", prompt, 12, temperature=1.0, top_k=1)]})
    assert results["k1"].token_ids == greedy_reference(model_dir, prompt, 12)


def test_logprobs_come_with_every_token_when_asked(make_engine, prompts):
    first, second = prompts([10, 10], seed=22)
    results = drive(make_engine(), {0: [request("lp", first, 5, logprobs=3), request("plain", second, 5)]})
    with_logprobs = results["lp"]
    assert len(with_logprobs.logprobs) == len(with_logprobs.token_ids)
    for token, position in zip(with_logprobs.token_ids, with_logprobs.logprobs):
        assert position.chosen.token_id == token and position.chosen.logprob <= 0.0
        assert len(position.top) == 3 and position.top[0].token_id == token  # greedy picks the top one
    assert results["plain"].logprobs == []
