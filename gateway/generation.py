"""Runs a request's choices as concurrent upstream streams and merges them into one.

Invariants: with several choices every choice's GenerateRequest runs in its own task (a single
choice runs in the consumer's); deltas come out in arrival order, a choice's own deltas in its
order; when the consumer stops early (client gone, deadline, error) every upstream iteration is
closed, which cancels its gRPC call and so aborts the work on the worker. A choice whose stop
string matched closes its stream at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Executor
from contextlib import aclosing

from gateway.choice_decoder import ChoiceDecoder, ChoiceDelta
from gateway.errors import OpenAIError, from_scheduler, internal, unavailable
from gateway.scheduler_client import SchedulerApi, SchedulerError
from services.types import FINISH_ABORT, FINISH_ERROR, GenerateRequest, RequestOutput

log = logging.getLogger(__name__)
QUEUED_DELTAS_PER_CHOICE = 8
# Decoding one streamed token takes ~5 µs of CPU, handing it to the executor ~70 µs (thread
# wake-ups; measured with bench-135m's tokenizer), and on a machine shared with the engine those
# wake-ups take cores from it. So increments this small are decoded on the loop; only big ones (a
# resumed stream's backlog, many top logprobs per token) go to the executor.
INLINE_DECODE_WORK = 16


def decode_work(output: RequestOutput) -> int:
    """Tokens to turn into text for this increment: its own, plus every top-logprob alternative."""
    return len(output.token_ids) + sum(len(position.top) for position in output.logprobs)


def _failed_output(output: RequestOutput) -> OpenAIError:
    if output.finish_reason == FINISH_ABORT:
        return unavailable(output.error or "the serving side aborted the request")
    return internal(output.error or "generation failed on the worker")


async def choice_deltas(client: SchedulerApi, executor: Executor, request: GenerateRequest,
                        decoder: ChoiceDecoder) -> AsyncIterator[ChoiceDelta]:
    """One choice's deltas, empty ones included, up to and with its finish; raises OpenAIError for
    any failure. Always use inside `aclosing` so an early exit cancels the upstream call."""
    loop = asyncio.get_running_loop()
    try:
        async with aclosing(client.generate(request)) as outputs:
            async for output in outputs:
                if output.finish_reason in (FINISH_ERROR, FINISH_ABORT):
                    raise _failed_output(output)
                if decode_work(output) <= INLINE_DECODE_WORK:
                    delta = decoder.consume(output)
                else:
                    delta = await loop.run_in_executor(executor, decoder.consume, output)
                yield delta
                if delta.finish_reason is not None:
                    return
        raise internal(f"the stream of {request.request_id} ended without a finish reason")
    except SchedulerError as e:
        raise from_scheduler(e.code, e.message, request.model, e.retry_after_s) from None
    except OpenAIError:
        raise
    except Exception as e:
        log.exception("choice %s failed", request.request_id, extra={"request_id": request.request_id})
        raise internal(f"generation failed: {type(e).__name__}") from None


async def merged_deltas(client: SchedulerApi, executor: Executor, requests: Sequence[GenerateRequest],
                        decoders: Sequence[ChoiceDecoder]) -> AsyncIterator[ChoiceDelta]:
    """Yield non-empty deltas of all choices until each has finished; raise the first OpenAIError
    any choice hits. Always use inside `aclosing` so early exits cancel the upstream calls."""
    if len(requests) == 1:
        # Most requests have one choice: its deltas go straight through, without a task and a
        # queue handing each token over (two event-loop wake-ups less per token).
        async with aclosing(choice_deltas(client, executor, requests[0], decoders[0])) as deltas:
            async for delta in deltas:
                if not delta.empty:
                    yield delta
        return
    queue: asyncio.Queue[ChoiceDelta | OpenAIError] = asyncio.Queue(
        maxsize=QUEUED_DELTAS_PER_CHOICE * len(requests))

    async def pump(request: GenerateRequest, decoder: ChoiceDecoder) -> None:
        try:
            async with aclosing(choice_deltas(client, executor, request, decoder)) as deltas:
                async for delta in deltas:
                    await queue.put(delta)
        except OpenAIError as e:
            await queue.put(e)

    tasks = [asyncio.create_task(pump(r, d)) for r, d in zip(requests, decoders, strict=True)]
    try:
        unfinished = len(tasks)
        while unfinished:
            item = await queue.get()
            if isinstance(item, OpenAIError):
                raise item
            if item.finish_reason is not None:
                unfinished -= 1
            if not item.empty:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
