"""The sampler's logits processors against hand-computed values and transformers' own processors."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from worker.sampling.penalties import penalise
from worker.sampling.truncation import apply_min_p, apply_top_k, apply_top_p

torch.set_num_threads(min(2, torch.get_num_threads()))


def penalised(logits, prompts, outputs, repetition=None, presence=None, frequency=None) -> torch.Tensor:
    rows = logits.shape[0]
    result = logits.clone()
    penalise(
        result,
        prompts,
        outputs,
        repetition=torch.tensor(repetition or [1.0] * rows),
        presence=torch.tensor(presence or [0.0] * rows),
        frequency=torch.tensor(frequency or [0.0] * rows),
    )
    return result


def test_presence_and_frequency_penalties_by_hand():
    logits = torch.tensor([[1.0, 2.0, -1.0, 0.5, 3.0], [1.0, 2.0, -1.0, 0.5, 3.0]])
    result = penalised(
        logits,
        prompts=[[3, 3], [4]],  # prompts do not count for presence or frequency
        outputs=[[1, 1, 2, 1], []],
        presence=[0.5, 0.5],
        frequency=[0.25, 0.25],
    )
    expected_first = [1.0, 2.0 - 0.5 - 3 * 0.25, -1.0 - 0.5 - 0.25, 0.5, 3.0]
    assert result[0].tolist() == pytest.approx(expected_first)
    assert result[1].tolist() == logits[1].tolist()


def test_repetition_penalty_by_hand_covers_prompt_and_output():
    logits = torch.tensor([[2.0, -2.0, 4.0, -0.5, 1.0]])
    result = penalised(logits, prompts=[[0, 0, 1]], outputs=[[3]], repetition=[2.0])
    assert result[0].tolist() == pytest.approx([1.0, -4.0, 4.0, -1.0, 1.0])


def test_repetition_penalty_matches_transformers():
    generator = torch.Generator().manual_seed(0)
    vocab = 100
    logits = torch.randn(4, vocab, generator=generator) * 3
    prompts = [[5, 6, 7, 5], [0], [], [99, 1]]
    outputs = [[8, 8, 5], [], [], [0, 42, 42, 17]]
    penalties = [1.3, 1.1, 2.0, 0.8]
    result = penalised(logits, prompts, outputs, repetition=penalties)
    for i in range(4):
        history = torch.tensor([prompts[i] + outputs[i]], dtype=torch.int64)
        expected = RepetitionPenaltyLogitsProcessor(penalties[i])(history, logits[i : i + 1].clone())
        assert torch.equal(result[i], expected[0]), i


def test_penalties_ignore_token_ids_outside_the_vocabulary():
    logits = torch.tensor([[1.0, 1.0, 1.0]])
    result = penalised(logits, prompts=[[7, -1]], outputs=[[2, 9]], repetition=[2.0], frequency=[1.0])
    assert result[0].tolist() == pytest.approx([1.0, 1.0, 1.0 / 2.0 - 1.0])


def test_all_penalties_together_in_vllm_order():
    logits = torch.tensor([[3.0, -1.0, 0.0]])
    result = penalised(
        logits, prompts=[[1]], outputs=[[0, 0]], repetition=[1.5], presence=[0.2], frequency=[0.1]
    )
    assert result[0].tolist() == pytest.approx([3.0 / 1.5 - 0.2 - 0.2, -1.5, 0.0])


def kept(logits: torch.Tensor) -> list[list[int]]:
    return [torch.isfinite(row).nonzero().squeeze(1).tolist() for row in logits]


def transformers_kept(warper, logits: torch.Tensor) -> list[list[int]]:
    return kept(torch.cat([warper(None, row.unsqueeze(0).clone()) for row in logits]))


@pytest.mark.parametrize("top_k", [1, 3, 40])
def test_top_k_matches_transformers(top_k):
    logits = torch.randn(5, 300, generator=torch.Generator().manual_seed(top_k))
    ours = logits.clone()
    apply_top_k(ours, torch.tensor([top_k] * 4 + [0]))
    assert kept(ours)[:4] == transformers_kept(TopKLogitsWarper(top_k), logits[:4])
    assert kept(ours)[4] == list(range(300))  # top_k = 0 disables the filter


@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("vocab, scale", [(200, 3.0), (5000, 3.0), (5000, 0.5)])
def test_top_p_matches_transformers(top_p, vocab, scale):
    """Covers nuclei found among the first 256 ranked tokens and (flat rows) far wider ones."""
    logits = torch.randn(4, vocab, generator=torch.Generator().manual_seed(vocab)) * scale
    ours = logits.clone()
    apply_top_p(ours, torch.tensor([top_p, top_p, top_p, 1.0]))
    assert kept(ours)[:3] == transformers_kept(TopPLogitsWarper(top_p), logits[:3])
    assert kept(ours)[3] == list(range(vocab))


def test_top_p_after_top_k_renormalises_over_the_k_best():
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]]))
    apply_top_k(logits, torch.tensor([2]))
    apply_top_p(logits, torch.tensor([0.5]))  # 0.4 / 0.7 > 0.5
    assert kept(logits) == [[0]]


@pytest.mark.parametrize("min_p", [0.05, 0.2, 0.9])
def test_min_p_matches_transformers(min_p):
    logits = torch.randn(4, 500, generator=torch.Generator().manual_seed(3)) * 2
    ours = logits.clone()
    apply_min_p(ours, torch.tensor([min_p, min_p, min_p, 0.0]))
    assert kept(ours)[:3] == transformers_kept(MinPLogitsWarper(min_p), logits[:3])
    assert kept(ours)[3] == list(range(500))
