"""OpenTelemetry set-up shared by the three processes, configured by the standard OTEL_* variables.

`OTEL_TRACES_EXPORTER`: `none` (default: spans are not exported, and cost almost nothing),
`otlp` (OTLP over HTTP to OTEL_EXPORTER_OTLP_ENDPOINT / _TRACES_ENDPOINT), or `console` (one JSON
object per line on stderr, for debugging and for the tests). One trace spans a request's path:
the gateway's span context travels to the scheduler in gRPC metadata (W3C traceparent) and on to
the worker inside the request (GenerateRequest.trace_context).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.trace import Span, Status, StatusCode


def setup_tracing(service: str) -> None:
    """Install a tracer provider for this process according to OTEL_TRACES_EXPORTER."""
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "none").strip().lower()
    if exporter_name in ("", "none"):
        return
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", f"ferrum-{service}")})
    provider = TracerProvider(resource=resource)
    if exporter_name == "console":
        exporter = ConsoleSpanExporter(out=sys.stderr, formatter=lambda span: span.to_json(indent=None) + "\n")
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif exporter_name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        raise SystemExit(f"OTEL_TRACES_EXPORTER={exporter_name!r} is not supported: use none, console or otlp")
    trace.set_tracer_provider(provider)


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def inject(ctx: context.Context | None = None) -> dict[str, str]:
    """The current (or given) span context as W3C headers, for gRPC metadata or a request field."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=ctx)
    return carrier


def extract(carrier: Mapping[str, str]) -> context.Context:
    return propagate.extract(dict(carrier))


@contextlib.contextmanager
def unattached_span(
    tracer_: trace.Tracer, name: str, parent: context.Context
) -> Iterator[tuple[Span, context.Context]]:
    """A span that is never made the current one; yields it and a context holding it, which children
    must be given explicitly. For async generators (gRPC streaming handlers): grpc may close one from
    another task, and a context attached before a `yield` cannot be detached there (OpenTelemetry
    then logs "Failed to detach context" as an error). An exception other than the generator being
    closed or cancelled marks the span as failed, as `start_as_current_span` would."""
    span = tracer_.start_span(name, context=parent)
    try:
        yield span, trace.set_span_in_context(span, parent)
    except Exception as exc:
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        span.end()
