"""Figures of one benchmark run, computed from its request records (pure)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

from tests.bench.records import RequestRecord


def percentile(values: Sequence[float], pct: float) -> float | None:
    """The pct-th percentile with linear interpolation between closest ranks (numpy's default
    'linear' method); None for no values."""
    if not 0.0 <= pct <= 100.0:
        raise ValueError(f"percentile must be within 0..100, got {pct}")
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _scaled(values: Sequence[float], pcts: Sequence[float], scale: float) -> dict[str, float | None]:
    out = {}
    for pct in pcts:
        value = percentile(values, pct)
        out[f"p{pct:g}"] = None if value is None else value * scale
    return out


@dataclass
class RunMetrics:
    """Per-run figures. Rates divide by `duration_s`, from the first request's start to the last
    one's end (a cut request's end is the hard time limit). Latency percentiles cover successful
    requests only; ITL is the gap between output chunks. `cached_share` is cached / prompt tokens
    over the requests whose server reported it (None when none did)."""

    requests: int
    errors: int
    cut: int  # still running at the run's hard time limit: not counted in any figure
    duration_s: float
    requests_per_s: float
    output_tokens_per_s: float
    prompt_tokens: int
    output_tokens: int
    ttft_ms: dict[str, float | None]
    itl_ms: dict[str, float | None]
    e2e_s: dict[str, float | None]
    cached_share: float | None
    first_errors: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


def summarise(records: Sequence[RequestRecord]) -> RunMetrics:
    ok = [r for r in records if r.ok]
    duration = (max(r.end for r in records) - min(r.start for r in records)) if records else 0.0
    output_tokens = sum(r.output_tokens for r in ok)
    reported = [r for r in ok if r.cached_tokens is not None]
    reported_prompt = sum(r.prompt_tokens for r in reported)
    cached_share = (sum(r.cached_tokens for r in reported) / reported_prompt) if reported_prompt else None
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    gaps = [gap for r in ok for gap in r.inter_token_gaps]
    return RunMetrics(
        requests=len(records),
        errors=sum(1 for r in records if r.error),
        cut=sum(1 for r in records if r.cut),
        duration_s=duration,
        requests_per_s=len(ok) / duration if duration > 0 else 0.0,
        output_tokens_per_s=output_tokens / duration if duration > 0 else 0.0,
        prompt_tokens=sum(r.prompt_tokens for r in ok),
        output_tokens=output_tokens,
        ttft_ms=_scaled(ttfts, (50, 95, 99), 1000.0),
        itl_ms=_scaled(gaps, (50, 95), 1000.0),
        e2e_s=_scaled([r.end - r.start for r in ok], (50, 95), 1.0),
        cached_share=cached_share,
        first_errors=sorted({r.error for r in records if r.error})[:3],
    )
