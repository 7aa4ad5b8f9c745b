"""The bench's statistics on known data: percentiles, rates, latencies, errors, cached share."""

from __future__ import annotations

import pytest

from tests.bench.records import RequestRecord
from tests.bench.stats import percentile, summarise


def test_percentiles_interpolate_linearly_between_ranks():
    values = [float(v) for v in range(10, 0, -1)]  # 10..1, unsorted on purpose
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == pytest.approx(5.5)
    assert percentile(values, 95) == pytest.approx(9.55)
    assert percentile(values, 99) == pytest.approx(9.91)
    assert percentile(values, 100) == 10.0
    assert percentile([4.0], 95) == 4.0
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile(values, 101)


def _record(start, first, gaps, prompt=100, output=4, cached=None, error=""):
    times = [first]
    for gap in gaps:
        times.append(times[-1] + gap)
    return RequestRecord(start=start, end=times[-1], token_times=times, prompt_tokens=prompt,
                         output_tokens=output, cached_tokens=cached, error=error)


def test_summary_rates_and_latencies_on_known_requests():
    records = [
        _record(0.0, 0.1, [0.05, 0.05, 0.05], cached=50),  # ttft 100 ms, ends at 0.25
        _record(0.0, 0.3, [0.1, 0.1, 0.1], cached=0),  # ttft 300 ms, ends at 0.6
        _record(0.5, 0.7, [0.1, 0.1, 0.2]),  # ttft 200 ms, ends at 1.1 (server reported no cache figure)
        RequestRecord(start=0.9, end=2.0, error="HTTP 500: boom"),  # failed: last end, no tokens
    ]
    m = summarise(records)
    assert (m.requests, m.errors) == (4, 1)
    assert m.duration_s == pytest.approx(2.0)
    assert m.requests_per_s == pytest.approx(3 / 2.0)
    assert m.output_tokens == 12 and m.output_tokens_per_s == pytest.approx(12 / 2.0)
    assert m.ttft_ms["p50"] == pytest.approx(200.0)
    assert m.ttft_ms["p99"] == pytest.approx(298.0)
    assert m.itl_ms["p50"] == pytest.approx(100.0)
    assert m.itl_ms["p95"] == pytest.approx(160.0)
    assert m.e2e_s["p50"] == pytest.approx(0.6)
    assert m.cached_share == pytest.approx(50 / 200), "only requests that reported cached tokens count"
    assert m.first_errors == ["HTTP 500: boom"]


def test_cut_requests_are_neither_successes_nor_errors():
    records = [_record(0.0, 0.1, [0.1]), RequestRecord(start=0.0, end=3.0, cut=True)]
    m = summarise(records)
    assert (m.requests, m.errors, m.cut) == (2, 0, 1)
    assert m.output_tokens == 4 and m.duration_s == pytest.approx(3.0)


def test_summary_of_only_failures_has_no_latencies_and_no_cached_share():
    m = summarise([RequestRecord(start=0.0, end=1.0, error="x")])
    assert m.errors == 1 and m.output_tokens_per_s == 0.0
    assert m.ttft_ms["p50"] is None and m.cached_share is None
