"""Logprobs as OpenAI reports them: from the model's raw distribution (vLLM's default
"raw logprobs"), i.e. log_softmax of the logits before penalties, temperature or truncation."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from services.types import PositionLogprobs, TokenLogprob


def raw_logprobs(logits: torch.Tensor, chosen: torch.Tensor, num_top: Sequence[int]) -> list[PositionLogprobs]:
    """For row i of `logits` `[rows, vocab]`: the logprob of token `chosen[i]` and the
    `num_top[i]` most likely tokens, most likely first. One top-k serves the whole batch."""
    logits = logits.float()
    # log_softmax(x)_i = x_i - logsumexp(x): only the chosen and top entries are ever read.
    log_total = logits.logsumexp(dim=1, keepdim=True)
    chosen_logprobs = (logits.gather(1, chosen.unsqueeze(1)) - log_total).squeeze(1).tolist()
    largest = max(num_top, default=0)
    top_values: list[list[float]] = [[] for _ in num_top]
    top_ids: list[list[int]] = [[] for _ in num_top]
    if largest > 0:
        top = logits.topk(min(largest, logits.shape[1]), dim=1)
        top_values, top_ids = (top.values - log_total).tolist(), top.indices.tolist()
    return [
        PositionLogprobs(
            chosen=TokenLogprob(token_id=token_id, logprob=chosen_logprob),
            top=[TokenLogprob(token_id=i, logprob=v) for i, v in zip(ids[:k], values[:k])],
        )
        for token_id, chosen_logprob, ids, values, k in zip(
            chosen.tolist(), chosen_logprobs, top_ids, top_values, num_top
        )
    ]
