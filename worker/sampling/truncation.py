"""Top-k, top-p (nucleus) and min-p truncation of temperature-scaled logits, vectorised.

Each function takes float32 logits `[rows, vocab]` and one parameter tensor `[rows]`, and sets
the logits of the tokens it removes to -inf in place. A row whose parameter disables the filter
(top_k <= 0 or >= vocab, top_p >= 1, min_p <= 0) is left untouched. The most likely token is
never removed, so every row keeps at least one candidate. Tokens tied with the last one kept
are kept too (a threshold, not a sort order, decides).
"""

from __future__ import annotations

import torch

_NEG_INF = float("-inf")
_FIRST_NUCLEUS_BOUND = 256


def apply_top_k(logits: torch.Tensor, top_k: torch.Tensor) -> None:
    """Keep the k most likely tokens of each row."""
    vocab_size = logits.shape[1]
    enabled = (top_k > 0) & (top_k < vocab_size)
    if not bool(enabled.any()):
        return
    k = torch.where(enabled, top_k, vocab_size)
    largest = int(k[enabled].max())
    kth_largest = logits.topk(largest, dim=1).values.gather(1, (k.clamp(max=largest) - 1).unsqueeze(1))
    threshold = torch.where(enabled.unsqueeze(1), kth_largest, _NEG_INF)
    logits.masked_fill_(logits < threshold, _NEG_INF)


def apply_top_p(logits: torch.Tensor, top_p: torch.Tensor) -> None:
    """Keep the smallest set of most likely tokens whose probability reaches top_p.

    Same rule as transformers' TopPLogitsWarper and vLLM: a token is dropped when the tokens
    more likely than it already hold at least top_p of the probability. Only the best tokens
    are ranked, never the whole vocabulary unless the whole vocabulary may be in the nucleus."""
    enabled = top_p < 1.0
    if not bool(enabled.any()):
        return
    rows = enabled.nonzero().squeeze(1)
    subset = logits if rows.numel() == logits.shape[0] else logits.index_select(0, rows)
    thresholds = torch.full((logits.shape[0],), _NEG_INF, dtype=logits.dtype, device=logits.device)
    thresholds[rows] = _nucleus_thresholds(subset, top_p.index_select(0, rows))
    logits.masked_fill_(logits < thresholds.unsqueeze(1), _NEG_INF)


def _nucleus_thresholds(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Per row, the logit of the least likely token of its nucleus."""
    vocab_size = logits.shape[1]
    log_total = logits.logsumexp(dim=1, keepdim=True)
    # A token is surely outside the nucleus when vocab_size tokens as likely as it would still fit
    # in the excluded tail (1 - top_p): only the tokens above that bound need ranking.
    bound = log_total + ((1.0 - top_p) / vocab_size).log().unsqueeze(1)
    candidates = (logits > bound).sum(dim=1).clamp(min=1)
    most_candidates = int(candidates.max())
    thresholds = torch.empty(logits.shape[0], dtype=logits.dtype, device=logits.device)
    pending = torch.arange(logits.shape[0], device=logits.device)
    # Nuclei are usually small: rank a few hundred tokens first, and all candidates if needed.
    for width in (min(_FIRST_NUCLEUS_BOUND, most_candidates), most_candidates):
        pending_logits = logits if pending.numel() == logits.shape[0] else logits.index_select(0, pending)
        best = pending_logits.topk(width, dim=1).values
        probs = (best - log_total.index_select(0, pending)).exp()
        mass_through = probs.cumsum(dim=1)
        mass_before = torch.nn.functional.pad(mass_through[:, :-1], (1, 0))
        row_top_p = top_p.index_select(0, pending).unsqueeze(1)
        kept = (mass_before < row_top_p).sum(dim=1).clamp(min=1)
        found = (mass_through[:, -1:] >= row_top_p).squeeze(1) | (candidates.index_select(0, pending) <= width)
        thresholds[pending[found]] = best[found].gather(1, (kept[found] - 1).unsqueeze(1)).squeeze(1)
        pending = pending[~found]
        if pending.numel() == 0:
            break
    return thresholds


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> None:
    """Keep tokens whose probability is at least min_p times the row's highest probability."""
    enabled = min_p > 0.0
    if not bool(enabled.any()):
        return
    # p_i >= min_p * p_max  <=>  logit_i >= logit_max + log(min_p); log(0) = -inf keeps everything.
    threshold = logits.amax(dim=1, keepdim=True) + min_p.clamp(max=1.0).log().unsqueeze(1)
    logits.masked_fill_(logits < threshold, _NEG_INF)
