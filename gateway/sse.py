"""Server-sent events framing as OpenAI streams it: `data: {json}\n\n` ..., `data: [DONE]\n\n` for
completions; the Responses API names each event (`event: response.created\ndata: {json}\n\n`)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

DONE_EVENT = b"data: [DONE]\n\n"


def encode_event(payload: dict[str, Any], event: str | None = None) -> bytes:
    """One event. JSON escapes every newline in strings, so a payload is always one `data:` line."""
    name = f"event: {event}\n".encode() if event else b""
    return name + b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":"),
                                  allow_nan=False).encode() + b"\n\n"


async def open_event_stream(request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    response = web.StreamResponse(status=200, headers={
        "Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers})
    response.content_type = "text/event-stream"
    response.charset = "utf-8"
    await response.prepare(request)
    return response
