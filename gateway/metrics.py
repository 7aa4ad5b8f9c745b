"""The gateway's Prometheus metrics, in a registry of its own (one per app, so tests stay apart).

Label values are bounded: `model` is set only for models the cluster serves (else ""),
`endpoint` is a route template or "unmatched", `status` an HTTP status code.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from services.process_metrics import resident_memory_bytes

LATENCY_BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000, 300000)
TTFT_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
TOKEN_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12)


class GatewayMetrics:
    def __init__(self, active_streams: Callable[[], float]):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("ferrum_infer_requests", "HTTP requests handled by the gateway",
                                ["model", "endpoint", "status"], registry=r)
        self.request_duration = Histogram(
            "ferrum_infer_request_duration_ms", "Time from request arrival to the end of the response",
            ["model", "endpoint"], buckets=LATENCY_BUCKETS_MS, registry=r)
        self.time_to_first_token = Histogram(
            "ferrum_infer_time_to_first_token_seconds", "Time from request arrival to a choice's first token",
            ["model"], buckets=TTFT_BUCKETS_S, registry=r)
        self.inter_token_latency = Histogram(
            "ferrum_infer_inter_token_latency_seconds", "Time between successive tokens of a choice",
            ["model"], buckets=TOKEN_LATENCY_BUCKETS_S, registry=r)
        self.prompt_tokens = Counter("ferrum_infer_prompt_tokens", "Prompt tokens of served requests",
                                     ["model"], registry=r)
        self.generation_tokens = Counter("ferrum_infer_generation_tokens",
                                         "Tokens generated for served requests", ["model"], registry=r)
        Gauge("ferrum_infer_gateway_active_streams", "Upstream requests (choices) in flight",
              registry=r).set_function(active_streams)
        Gauge("ferrum_infer_memory_usage_bytes", "Resident memory of the gateway process",
              registry=r).set_function(resident_memory_bytes)

    def observe_request(self, model: str, endpoint: str, status: int, duration_ms: float) -> None:
        self.requests.labels(model, endpoint, str(status)).inc()
        self.request_duration.labels(model, endpoint).observe(duration_ms)

    def observe_tokens(self, model: str, prompt_tokens: int, generation_tokens: int) -> None:
        self.prompt_tokens.labels(model).inc(prompt_tokens)
        self.generation_tokens.labels(model).inc(generation_tokens)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class TokenTimer:
    """Feeds time-to-first-token and inter-token latency of one request's choices."""

    def __init__(self, metrics: GatewayMetrics, model: str, started: float, clock: Callable[[], float]):
        self._ttft = metrics.time_to_first_token.labels(model)
        self._itl = metrics.inter_token_latency.labels(model)
        self._started = started
        self._clock = clock
        self._last: dict[int, float] = {}

    def tokens_arrived(self, choice_index: int, count: int) -> None:
        if count <= 0:
            return
        now = self._clock()
        last = self._last.get(choice_index)
        if last is None:
            self._ttft.observe(now - self._started)
        else:
            per_token_s = (now - last) / count
            for _ in range(count):
                self._itl.observe(per_token_s)
        self._last[choice_index] = now
