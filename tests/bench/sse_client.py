"""One streamed /v1/completions request, observed as a RequestRecord."""

from __future__ import annotations

import json
import time

import aiohttp

from tests.bench.endpoint import Endpoint
from tests.bench.records import RequestRecord
from tests.bench.workloads import BenchRequest


def _apply_event(record: RequestRecord, payload: dict, now: float) -> None:
    """Fold one SSE data object into the record; an error object ends the request as failed."""
    if "error" in payload:
        error = payload["error"]
        record.error = str(error.get("message", error) if isinstance(error, dict) else error)
        return
    for choice in payload.get("choices") or []:
        text = choice.get("text") or (choice.get("delta") or {}).get("content") or ""
        if text:
            record.token_times.append(now)
            break
    usage = payload.get("usage")
    if usage:
        record.prompt_tokens = usage.get("prompt_tokens", 0) or 0
        record.output_tokens = usage.get("completion_tokens", 0) or 0
        details = usage.get("prompt_tokens_details") or {}
        if details.get("cached_tokens") is not None:
            record.cached_tokens = int(details["cached_tokens"])


async def send(session: aiohttp.ClientSession, endpoint: Endpoint, request: BenchRequest) -> RequestRecord:
    """Never raises for a failed request: failures come back as a record with `error` set.

    Without a usage object the output token count falls back to the number of text chunks and the
    prompt count to the prompt's length."""
    body = endpoint.body(request)
    record = RequestRecord(start=time.perf_counter())
    try:
        async with session.post(endpoint.completions_url, json=body) as response:
            if response.status != 200:
                record.error = f"HTTP {response.status}: {(await response.text())[:300]}"
                return record
            async for raw in response.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                _apply_event(record, json.loads(data), time.perf_counter())
                if record.error:
                    break
    except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as error:
        record.error = f"{type(error).__name__}: {error}"
    finally:
        record.end = time.perf_counter()
    if not record.error and not record.output_tokens:
        record.output_tokens = len(record.token_times)
    if not record.prompt_tokens:
        record.prompt_tokens = len(request.prompt_ids)
    if not record.error and not record.token_times:
        record.error = "stream ended without output"
    return record
