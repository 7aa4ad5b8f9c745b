"""Shared pieces of the gateway tests (no tests here): the tiny model's tokenizer as a worker would
send it, an in-memory scheduler that plays scripted outputs, and a gateway app around it.

The fake stands in for the scheduler only; everything of the gateway under test is the real code.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from gateway.model_tokenizer import ModelTokenizer
from gateway.scheduler_client import SchedulerError
from services.config import GatewaySettings
from services.types import (
    ClusterStatus,
    GenerateRequest,
    ModelInfo,
    PositionLogprobs,
    RequestOutput,
    TokenizerBundle,
    TokenLogprob,
    WorkerInfo,
    WorkerStats,
)

MODEL = "tiny"
HOLD = "hold"  # a script item: block until the gateway cancels the stream


@pytest.fixture(scope="session")
def bundle(tiny_llama_dir: Path) -> TokenizerBundle:
    from worker.model_source import model_context_length, tokenizer_bundle

    return tokenizer_bundle(tiny_llama_dir, MODEL, model_context_length(tiny_llama_dir))


@pytest.fixture(scope="session")
def tokenizer(bundle: TokenizerBundle) -> ModelTokenizer:
    return ModelTokenizer(bundle)


def outputs(request_id: str, token_ids: list[int], *, per_step: int = 1, finish: str = "length",
            logprobs: bool = False, cached_tokens: int = 0) -> list[RequestOutput]:
    """What a worker would stream for `token_ids`: `per_step` tokens per message, the last finished.
    With logprobs, token t gets logprob -t/1000 and alternatives t+1, t+2."""
    steps = [token_ids[i:i + per_step] for i in range(0, len(token_ids), per_step)] or [[]]
    result = []
    for i, step in enumerate(steps):
        positions = [PositionLogprobs(TokenLogprob(t, -t / 1000),
                                      [TokenLogprob(t + 1, -1.5), TokenLogprob(t + 2, -2.5)])
                     for t in step] if logprobs else []
        result.append(RequestOutput(request_id, list(step), positions,
                                    finish if i == len(steps) - 1 else "", cached_tokens=cached_tokens))
    return result


Script = Callable[[GenerateRequest], list]


class FakeScheduler:
    """Implements the SchedulerApi with scripted Generate streams; records requests and closures."""

    def __init__(self, bundle: TokenizerBundle, script: Script | None = None):
        self.bundles = {bundle.model: bundle}
        self.models = [ModelInfo(bundle.model, bundle.max_model_len, workers=1, created=1700000000)]
        self.script: Script = script or (lambda r: outputs(r.request_id, [454, 1043, 1121]))
        self.requests: list[GenerateRequest] = []
        self.generating = asyncio.Event()  # set once any Generate has started
        self.closed: dict[str, asyncio.Event] = {}
        self.tokenizer_fetches = 0
        self.cluster: ClusterStatus | SchedulerError = ClusterStatus(
            [WorkerInfo("w1", bundle.model, 1, WorkerStats(prefix_hit_tokens=30, prompt_tokens=120))], 2, 7)

    def closed_event(self, request_id: str) -> asyncio.Event:
        return self.closed.setdefault(request_id, asyncio.Event())

    async def generate(self, request: GenerateRequest) -> AsyncIterator[RequestOutput]:
        self.requests.append(request)
        self.generating.set()
        try:
            for item in self.script(request):
                if isinstance(item, Exception):
                    raise item
                if item == HOLD:
                    await asyncio.Event().wait()
                yield item
        finally:
            self.closed_event(request.request_id).set()

    async def abort(self, request_id: str) -> bool:
        return False

    async def list_models(self) -> list[ModelInfo]:
        return list(self.models)

    async def get_tokenizer(self, model: str) -> TokenizerBundle:
        self.tokenizer_fetches += 1
        if model not in self.bundles:
            raise SchedulerError("NOT_FOUND", f"The model `{model}` does not exist.")
        return self.bundles[model]

    async def cluster_status(self) -> ClusterStatus:
        if isinstance(self.cluster, SchedulerError):
            raise self.cluster
        return self.cluster


def gateway_settings(**overrides) -> GatewaySettings:
    values = {"api_key": None, "api_keys": None, "max_body_bytes": 64 * 1024, "request_timeout_s": 30.0,
              "max_concurrent_streams": 64}
    return GatewaySettings(**(values | overrides))


async def start_gateway(fake: FakeScheduler, **settings) -> TestClient:
    """A running gateway app (with handler cancellation, as in production) around `fake`."""
    client = TestClient(TestServer(create_app(gateway_settings(**settings), fake)))
    await client.start_server()
    return client


def sse_payloads(raw: str) -> list[str]:
    """The data fields of an SSE body, asserting OpenAI's framing (one `data:` line per event)."""
    assert raw.endswith("\n\n"), "the stream must end with a blank line"
    events = raw[:-2].split("\n\n")
    for event in events:
        assert event.startswith("data: ") and "\n" not in event, f"bad SSE event {event!r}"
    return [event[len("data: "):] for event in events]
