"""SIGTERM to the scheduler, as a client sees it: streams in flight finish with every token, a new
request meanwhile gets a 503 with Retry-After, the scheduler exits 0 within its grace, and the
workers and gateway stay up and serve again as soon as a scheduler is back."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest

from tests.chaos.conftest import DRAIN_GRACE_S, MODEL, client_for, uninterrupted
from tests.e2e.conftest import wait_until

pytestmark = pytest.mark.cluster

PROMPTS = ["Once upon a time", "The license says", "Tell me about"]
MAX_TOKENS = 500  # long enough that every stream is still running when the probe arrives


class Stream(threading.Thread):
    """One greedy streamed completion, read to its end in the background."""

    def __init__(self, client: openai.OpenAI, prompt: str):
        super().__init__(daemon=True)
        self.client = client
        self.prompt = prompt
        self.text = ""
        self.finish_reason: str | None = None
        self.completion_tokens: int | None = None
        self.error: Exception | None = None
        self.first_token = threading.Event()

    def run(self) -> None:
        try:
            for chunk in self.client.completions.create(
                    model=MODEL, prompt=self.prompt, max_tokens=MAX_TOKENS, temperature=0, stream=True,
                    stream_options={"include_usage": True}, extra_body={"ignore_eos": True}):
                if chunk.usage is not None:
                    self.completion_tokens = chunk.usage.completion_tokens
                for choice in chunk.choices:
                    self.text += choice.text
                    self.finish_reason = choice.finish_reason or self.finish_reason
                    self.first_token.set()
        except Exception as exc:  # asserted on by the test
            self.error = exc


def refusal(client: openai.OpenAI) -> openai.APIStatusError | None:
    """The error a new request gets, or None if it was served (sent before the drain began)."""
    try:
        client.completions.create(model=MODEL, prompt="Probe", max_tokens=1)
    except openai.APIStatusError as exc:
        return exc
    return None


def gateway_health(cluster) -> tuple[int, str]:
    """The gateway's /health status code and status word (what a load balancer's probe reads)."""
    try:
        with urllib.request.urlopen(f"{cluster.gateway_url}/health", timeout=10) as response:
            return response.status, json.load(response)["status"]
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)["status"]


def test_scheduler_sigterm_finishes_streams_refuses_new_work_and_exits_cleanly(one_worker_cluster):
    cluster = one_worker_cluster
    client = client_for(cluster)
    expected = {prompt: uninterrupted(client, prompt, MAX_TOKENS) for prompt in PROMPTS}
    streams = [Stream(client, prompt) for prompt in PROMPTS]
    for stream in streams:
        stream.start()
    wait_until(lambda: all(s.first_token.is_set() for s in streams), what="every stream's first token")

    cluster.scheduler.signal(signal.SIGTERM)
    signalled = time.monotonic()
    refused = wait_until(lambda: refusal(client), what="a new request to be refused")
    assert any(s.is_alive() for s in streams), "the streams ended before the drain could be seen"
    assert refused.status_code == 503
    assert int(refused.response.headers["Retry-After"]) >= 1
    error = refused.response.json()["error"]
    assert error["type"] == "server_error" and error["code"] == "service_unavailable"
    assert "shutting down" in error["message"]
    assert gateway_health(cluster) == (503, "draining")

    for stream in streams:
        stream.join(timeout=DRAIN_GRACE_S)
        assert stream.error is None, stream.error
        assert stream.text == expected[stream.prompt]
        assert stream.finish_reason == "length" and stream.completion_tokens == MAX_TOKENS
    cluster.scheduler.popen.wait(timeout=max(0.0, signalled + DRAIN_GRACE_S - time.monotonic()))
    assert cluster.scheduler.popen.returncode == 0
    assert cluster.gateway.alive() and all(w.alive() for w in cluster.workers)

    cluster.scheduler.start()
    cluster.wait_for_workers(1)
    again = client.completions.create(model=MODEL, prompt="Hi", max_tokens=3, extra_body={"ignore_eos": True})
    assert again.usage.completion_tokens == 3
