"""OpenAI-style errors: the one exception type handlers raise, and the mappings into it.

Every failure a client can see leaves the gateway as `{"error": {"message", "type", "param",
"code"}}` with a matching HTTP status; nothing else turns into a response body.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"
RATE_LIMIT = "rate_limit_error"

# Union branches appear in pydantic locations as type names ("str", "list[int]"); a client only
# knows field names and indices.
_TYPE_SEGMENTS = {"str", "int", "float", "bool", "list", "dict", "none"}
_MAX_REPORTED_ERRORS = 3


class OpenAIError(Exception):
    """An error response: HTTP status plus OpenAI's error object (and optional extra headers)."""

    def __init__(self, status: int, message: str, *, type: str = INVALID_REQUEST,
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def model_not_found(model: str) -> OpenAIError:
    return OpenAIError(404, f"The model `{model}` does not exist.", param="model",
                       code="model_not_found")


def unavailable(message: str, retry_after_s: int = 1) -> OpenAIError:
    """503: the serving side cannot take the request now (no worker, scheduler unreachable or
    draining); always with Retry-After, since it is worth trying again."""
    return OpenAIError(503, message, type=SERVER_ERROR, code="service_unavailable",
                       headers={"Retry-After": str(max(1, retry_after_s))})


def too_many_requests(message: str, retry_after_s: int = 1) -> OpenAIError:
    return OpenAIError(429, message, type=RATE_LIMIT, code="rate_limit_exceeded",
                       headers={"Retry-After": str(max(1, retry_after_s))})


def timed_out(message: str) -> OpenAIError:
    return OpenAIError(504, message, type=SERVER_ERROR, code="timeout")


def internal(message: str) -> OpenAIError:
    return OpenAIError(500, message, type=SERVER_ERROR, code="internal_error")


def _param_of(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc
             if not (isinstance(p, str) and (p in _TYPE_SEGMENTS or "[" in p or "-" in p))]
    return ".".join(parts) or None


def from_validation_error(error: ValidationError) -> OpenAIError:
    """A pydantic failure as a 400 naming the offending field(s); JSON syntax errors included."""
    details = error.errors(include_url=False, include_input=False)
    first = details[0]
    if first["type"] == "json_invalid":
        return invalid_request(f"The request body is not valid JSON: {first['msg']}", code="invalid_json")
    if first["type"] == "model_type" and not first["loc"]:
        return invalid_request("The request body must be a JSON object.", code="invalid_json")
    reported: list[str] = []
    for d in details:
        param = _param_of(d["loc"])
        line = f"{param}: {d['msg']}" if param else d["msg"]
        if line not in reported:
            reported.append(line)
    return invalid_request("; ".join(reported[:_MAX_REPORTED_ERRORS]), param=_param_of(first["loc"]),
                           code="invalid_value")


def from_scheduler(code: str, message: str, model: str, retry_after_s: int | None = None) -> OpenAIError:
    """Map the scheduler's gRPC status (by name) to what the client sees."""
    if code == "NOT_FOUND":
        return model_not_found(model)
    if code == "UNAVAILABLE":
        return unavailable(message or f"no worker is serving model `{model}`", retry_after_s or 1)
    if code == "RESOURCE_EXHAUSTED":
        return too_many_requests(message or "the server is overloaded", retry_after_s or 1)
    if code == "INVALID_ARGUMENT":
        return invalid_request(message)
    if code == "DEADLINE_EXCEEDED":
        return timed_out(message or "the request took too long")
    return OpenAIError(502, f"the scheduler failed the request ({code}): {message}", type=SERVER_ERROR,
                       code="upstream_error")
