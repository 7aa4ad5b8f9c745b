"""The worker's sampler through its public API: greedy, seeds, truncation, min_tokens, logprobs."""

from __future__ import annotations

import collections

import pytest
import torch

from services.types import SamplingParams
from worker.sampling import SampledToken, Sampler, SamplingRow, make_generator

torch.set_num_threads(min(2, torch.get_num_threads()))

VOCAB = 64
EOS = 3


def row(output: list[int] | None = None, prompt: list[int] | None = None, **params) -> SamplingRow:
    sampling = SamplingParams(**params)
    return SamplingRow(
        params=sampling,
        prompt_token_ids=prompt if prompt is not None else [1, 2],
        output_token_ids=output if output is not None else [],
        generator=make_generator(sampling.seed, "cpu"),
    )


def token_ids(sampled: list[SampledToken]) -> list[int]:
    return [token.token_id for token in sampled]


def random_logits(rows: int, vocab: int = VOCAB, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * scale


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_greedy_is_argmax_of_raw_logits(dtype):
    logits = random_logits(8).to(dtype)
    logits[0, 5] = logits[0, 9] = logits[0].max() + 1  # a tie: torch.argmax takes the first
    sampler = Sampler(VOCAB, [EOS], "cpu")
    assert token_ids(sampler.sample(logits, [row() for _ in range(8)])) == logits.argmax(dim=1).tolist()


def test_greedy_rows_ignore_random_rows_in_the_same_batch():
    logits = random_logits(6)
    rows = [row(), row(temperature=1.0), row(logprobs=2), row(temperature=0.7, top_p=0.5), row(), row(seed=1)]
    sampled = Sampler(VOCAB, [EOS], "cpu").sample(logits, rows)
    greedy = [i for i, r in enumerate(rows) if r.params.greedy]
    assert [sampled[i].token_id for i in greedy] == logits.argmax(dim=1)[greedy].tolist()


@pytest.mark.parametrize("temperature", [0.0, 0.5, 1.0, 2.0])
def test_top_k_one_is_greedy_at_any_temperature(temperature):
    logits = random_logits(16)
    rows = [row(temperature=temperature, top_k=1, seed=i if i % 2 else None) for i in range(16)]
    assert token_ids(Sampler(VOCAB, [EOS], "cpu").sample(logits, rows)) == logits.argmax(dim=1).tolist()


def test_seeded_draws_do_not_depend_on_batch_company_or_order():
    sampler = Sampler(VOCAB, [EOS], "cpu")
    flat = torch.zeros(1, VOCAB)  # every token equally likely: the seed alone decides
    others = random_logits(5, seed=7)

    def draws_alone(seed: int, steps: int) -> list[int]:
        target = row(temperature=1.0, seed=seed)
        for _ in range(steps):
            target.output_token_ids = [*target.output_token_ids, sampler.sample(flat, [target])[0].token_id]
        return list(target.output_token_ids)

    def draws_in_company(seed: int, steps: int, position: int) -> list[int]:
        target = row(temperature=1.0, seed=seed)
        company = [row(temperature=0.9), row(temperature=1.3, seed=99), row(), row(temperature=1.0, top_k=5)]
        for step in range(steps):
            batch = company[:position] + [target] + company[position:]
            logits = torch.cat([others[:position], flat, others[position : len(company)]])
            token = sampler.sample(logits, batch)[position].token_id
            target.output_token_ids = [*target.output_token_ids, token]
            company = company[step % 2 :] + company[: step % 2]
        return list(target.output_token_ids)

    alone = draws_alone(seed=1234, steps=12)
    assert draws_in_company(1234, 12, position=0) == alone
    assert draws_in_company(1234, 12, position=3) == alone
    assert draws_alone(seed=1235, steps=12) != alone


def test_seeded_draw_depends_only_on_seed_and_position():
    """A preempted or resumed sequence draws what it would have drawn without interruption."""
    sampler = Sampler(VOCAB, [EOS], "cpu")
    flat = torch.zeros(1, VOCAB)
    running = row(temperature=1.0, seed=42)
    for _ in range(6):
        running.output_token_ids = [*running.output_token_ids, sampler.sample(flat, [running])[0].token_id]
    resumed = row(output=list(running.output_token_ids[:4]), temperature=1.0, seed=42)
    assert sampler.sample(flat, [resumed])[0].token_id == running.output_token_ids[4]


def test_different_seeds_draw_different_tokens():
    flat = torch.zeros(20, VOCAB)
    rows = [row(temperature=1.0, seed=seed) for seed in range(20)]
    assert len(set(token_ids(Sampler(VOCAB, [EOS], "cpu").sample(flat, rows)))) > 10


def test_temperature_sampling_follows_softmax():
    torch.manual_seed(0)
    vocab, draws, temperature = 8, 20000, 0.7
    logits = torch.tensor([[2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, 0.2]])
    sampled = Sampler(vocab, [], "cpu").sample(logits.expand(draws, vocab), [row(temperature=temperature)] * draws)
    counts = collections.Counter(token_ids(sampled))
    expected = ((logits[0] / temperature).softmax(dim=0) * draws).tolist()
    chi_square = sum((counts[token] - expected[token]) ** 2 / expected[token] for token in range(vocab))
    assert chi_square < 24.3  # the 0.1% tail of chi-square with 7 degrees of freedom


def test_top_k_draws_only_the_k_best_and_all_of_them():
    torch.manual_seed(1)
    logits = random_logits(1, scale=0.3)
    best = set(logits[0].topk(5).indices.tolist())
    sampled = Sampler(VOCAB, [EOS], "cpu").sample(logits.expand(3000, VOCAB), [row(temperature=1.5, top_k=5)] * 3000)
    assert set(token_ids(sampled)) == best


def test_top_p_draws_only_the_nucleus():
    torch.manual_seed(2)
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])
    logits = probs.log().unsqueeze(0).expand(4000, 4)
    sampled = Sampler(4, [], "cpu").sample(logits, [row(temperature=1.0, top_p=0.75)] * 4000)
    counts = collections.Counter(token_ids(sampled))
    assert set(counts) == {1, 3}
    assert counts[1] / 4000 == pytest.approx(0.5 / 0.8, abs=0.03)


def test_min_p_draws_only_tokens_near_the_best():
    torch.manual_seed(3)
    probs = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05])
    logits = probs.log().unsqueeze(0).expand(4000, 5)
    sampled = Sampler(5, [], "cpu").sample(logits, [row(temperature=1.0, min_p=0.3)] * 4000)
    assert set(token_ids(sampled)) == {0, 1, 2}  # 0.15 >= 0.3 * 0.4 > 0.1


def test_penalties_steer_greedy_away_from_repeats():
    logits = torch.tensor([[5.0, 4.5, 4.0, 1.0]])
    sampler = Sampler(4, [], "cpu")

    def greedy(**params) -> int:
        return sampler.sample(logits, [row(prompt=[1], output=[0, 0], **params)])[0].token_id

    assert greedy() == 0
    assert greedy(frequency_penalty=0.3) == 1  # 5 - 2 * 0.3 < 4.5
    assert greedy(presence_penalty=0.6) == 1
    assert greedy(presence_penalty=0.4) == 0  # presence counts once, however often
    assert greedy(presence_penalty=1.0, repetition_penalty=1.2) == 2  # the prompt token 1 too


def test_min_tokens_masks_eos_and_stop_ids_until_reached():
    logits = torch.zeros(1, VOCAB)
    logits[0, EOS], logits[0, 10], logits[0, 11] = 9.0, 8.0, 7.0
    sampler = Sampler(VOCAB, [EOS], "cpu")

    def greedy_after(outputs: int) -> int:
        early = row(output=[20] * outputs, min_tokens=3, stop_token_ids=[10])
        return sampler.sample(logits, [early])[0].token_id

    assert greedy_after(0) == 11
    assert greedy_after(2) == 11
    assert greedy_after(3) == EOS


def test_min_tokens_masks_for_random_rows_too():
    torch.manual_seed(4)
    logits = torch.zeros(500, VOCAB)
    logits[:, EOS] = 20.0
    sampled = Sampler(VOCAB, [EOS, 7], "cpu").sample(logits, [row(temperature=1.0, min_tokens=1)] * 500)
    assert not {EOS, 7} & set(token_ids(sampled))


def test_logit_bias_forces_or_bans_tokens_in_its_own_row_only():
    logits = random_logits(4)
    second_best = logits[1].topk(2).indices[1].item()
    everything_but_9 = {token: -100.0 for token in range(VOCAB) if token != 9}
    rows = [row(logit_bias={7: 100.0}), row(logit_bias={int(logits[1].argmax()): -100.0}), row(),
            row(temperature=1.0, seed=3, logit_bias=everything_but_9)]
    sampled = Sampler(VOCAB, [EOS], "cpu").sample(logits, rows)
    assert token_ids(sampled) == [7, second_best, int(logits[2].argmax()), 9]


def test_logprobs_come_from_the_raw_logits():
    logits = random_logits(3)
    rows = [
        row(logprobs=4, repetition_penalty=1.5, prompt=[int(logits[0].argmax())]),
        row(logprobs=0, temperature=0.8, seed=5, logit_bias={3: 2.0}),
        row(),
    ]
    sampled = Sampler(VOCAB, [EOS], "cpu").sample(logits, rows)
    expected = logits.log_softmax(dim=1)
    for i in (0, 1):
        position = sampled[i].logprobs
        assert position.chosen.token_id == sampled[i].token_id
        assert position.chosen.logprob == pytest.approx(expected[i, sampled[i].token_id].item(), abs=1e-5)
    top = sampled[0].logprobs.top
    assert [t.token_id for t in top] == expected[0].topk(4).indices.tolist()
    assert [t.logprob for t in top] == pytest.approx(expected[0].topk(4).values.tolist(), abs=1e-5)
    assert sampled[0].token_id != top[0].token_id  # the penalty moved the choice, not the logprobs
    assert sampled[1].logprobs.top == []
    assert sampled[2].logprobs is None


def test_logits_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError):
        Sampler(VOCAB, [EOS], "cpu").sample(torch.zeros(2, VOCAB + 1), [row(), row()])
