"""Logit bias, repetition, presence and frequency penalties, and the min_tokens stop-token mask.

All of them change a float32 logits tensor `[rows, vocab]` in place, vectorised over the rows.
Token histories are packed into one padded tensor; the penalties gather the logits of the
history's tokens, change them and scatter them back, so the work grows with the history length,
not with the vocabulary. Every occurrence of a token scatters the same new value, so a token is
penalised once however often it occurs (the frequency penalty's size grows with the count).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def penalise(
    logits: torch.Tensor,
    prompts: Sequence[Sequence[int]],
    outputs: Sequence[Sequence[int]],
    repetition: torch.Tensor,
    presence: torch.Tensor,
    frequency: torch.Tensor,
) -> None:
    """Apply all three penalties with per-row parameter tensors `[rows]`, in the order of vLLM:
    repetition (over prompt and output tokens), then presence and frequency (output tokens only).
    Token ids outside the logits' width are ignored."""
    vocab_size = logits.shape[1]
    if bool((repetition != 1.0).any()):
        seen = [list(prompt) + list(output) for prompt, output in zip(prompts, outputs)]
        token_ids, real = _pack(seen, vocab_size, logits.device)
        # A row without real tokens holds only padding, which must stay unpenalised.
        apply_repetition_penalty(logits, token_ids, torch.where(real.any(dim=1), repetition, 1.0))
    if bool((presence != 0.0).any() | (frequency != 0.0).any()):
        token_ids, real = _pack(outputs, vocab_size, logits.device)
        apply_presence_frequency_penalties(logits, token_ids, real, presence, frequency)


def apply_repetition_penalty(logits: torch.Tensor, token_ids: torch.Tensor, penalty: torch.Tensor) -> None:
    """transformers/vLLM style: for each token in `token_ids` `[rows, n]`, a positive logit is
    divided by the row's penalty and any other multiplied by it."""
    seen_logits = logits.gather(1, token_ids)
    factor = penalty.unsqueeze(1)
    logits.scatter_(1, token_ids, torch.where(seen_logits > 0, seen_logits / factor, seen_logits * factor))


def apply_presence_frequency_penalties(
    logits: torch.Tensor,
    token_ids: torch.Tensor,
    real: torch.Tensor,
    presence: torch.Tensor,
    frequency: torch.Tensor,
) -> None:
    """OpenAI style: logit -= presence * (count > 0) + frequency * count, counting the entries of
    `token_ids` `[rows, n]` where `real` is set (the rest is padding)."""
    counts = torch.zeros_like(logits)
    counts.scatter_add_(1, token_ids, real.to(logits.dtype))
    occurrences = counts.gather(1, token_ids)
    penalty = presence.unsqueeze(1) * (occurrences > 0) + frequency.unsqueeze(1) * occurrences
    logits.scatter_(1, token_ids, logits.gather(1, token_ids) - penalty)


def add_logit_bias(logits: torch.Tensor, rows: Sequence[int], biases: Sequence[dict[int, float]]) -> None:
    """Add `biases[i][token]` to `logits[rows[i], token]` in place (OpenAI's logit_bias)."""
    _put(logits, rows, biases, accumulate=True)


def mask_stop_tokens(logits: torch.Tensor, rows: Sequence[int], token_ids: Sequence[Sequence[int]]) -> None:
    """Set `logits[rows[i], token_ids[i]]` to -inf in place (min_tokens not yet reached)."""
    _put(logits, rows, [dict.fromkeys(ids, float("-inf")) for ids in token_ids], accumulate=False)


def _put(logits: torch.Tensor, rows: Sequence[int], values: Sequence[dict[int, float]], accumulate: bool) -> None:
    """Write (or, accumulating, add) `values[i][token]` at `logits[rows[i], token]` in one call for the
    batch. Token ids outside the logits' width are ignored."""
    vocab_size = logits.shape[1]
    entries = [(row, token, value) for row, row_values in zip(rows, values)
               for token, value in row_values.items() if 0 <= token < vocab_size]
    if entries:
        row_index, token_index, written = zip(*entries)
        index = (torch.tensor(row_index, device=logits.device), torch.tensor(token_index, device=logits.device))
        written = torch.tensor(written, dtype=logits.dtype, device=logits.device)
        logits.index_put_(index, written, accumulate=accumulate)


def _pack(
    histories: Sequence[Sequence[int]], vocab_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Histories as one `[rows, longest]` int64 tensor and a bool mask of its real entries.

    Padding and out-of-vocabulary entries repeat the row's first real token (token 0 in a row
    without any), so a scatter never writes two different values to one place."""
    longest = max((len(history) for history in histories), default=0)
    padded = [list(history) + [-1] * (longest - len(history)) for history in histories]
    token_ids = torch.tensor(padded, dtype=torch.int64, device=device).reshape(len(histories), longest)
    real = (token_ids >= 0) & (token_ids < vocab_size)
    if longest == 0:
        return token_ids, real
    first_real_position = real.to(torch.uint8).argmax(dim=1, keepdim=True)
    first_real = token_ids.gather(1, first_real_position).clamp(min=0, max=vocab_size - 1)
    return torch.where(real, token_ids, first_real), real
