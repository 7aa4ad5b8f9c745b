"""merged_deltas: a streamed choice's text is decoded on the loop for small increments and in the
executor for big ones, and either way the client gets the same text."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing

from gateway.choice_decoder import ChoiceDecoder
from gateway.generation import INLINE_DECODE_WORK, decode_work, merged_deltas
from services.types import GenerateRequest, PositionLogprobs, RequestOutput, SamplingParams, TokenLogprob
from tests.unit.test_gateway_support import bundle, tokenizer  # noqa: F401  (fixtures)


class CountingExecutor(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(1)
        self.submitted = 0

    def submit(self, fn, /, *args, **kwargs):
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


class ScriptedScheduler:
    def __init__(self, outputs: list[RequestOutput]):
        self.outputs = outputs

    async def generate(self, request: GenerateRequest):
        for output in self.outputs:
            yield output


def stream_text(tokenizer, outputs: list[RequestOutput], executor) -> str:
    async def run() -> str:
        request = GenerateRequest("r", "tiny", [1, 2], SamplingParams())
        decoder = ChoiceDecoder(0, tokenizer, [1, 2], [], with_logprobs=True)
        merged = merged_deltas(ScriptedScheduler(outputs), executor, [request], [decoder])
        async with aclosing(merged):
            return "".join([delta.text async for delta in merged])

    return asyncio.run(run())


def test_token_by_token_streams_never_wait_for_a_thread(tokenizer):
    ids = tokenizer.encode("a stream of single tokens, as every decode step sends them", False)
    outputs = [RequestOutput("r", [t], [PositionLogprobs(TokenLogprob(t, -0.1))]) for t in ids]
    outputs[-1].finish_reason = "length"
    with CountingExecutor() as executor:
        assert stream_text(tokenizer, outputs, executor) == tokenizer.decode(ids)
    assert executor.submitted == 0


def test_big_increments_are_decoded_off_the_loop_with_the_same_text(tokenizer):
    ids = tokenizer.encode("a resumed stream delivers its backlog in one increment " * 4, False)
    assert len(ids) > INLINE_DECODE_WORK
    many_alternatives = [PositionLogprobs(TokenLogprob(ids[0], -0.1), [TokenLogprob(t, -1.0) for t in ids[:20]])]
    outputs = [RequestOutput("r", ids[:-1]), RequestOutput("r", ids[-1:], many_alternatives, "stop")]
    assert [decode_work(o) for o in outputs] == [len(ids) - 1, 21]
    with CountingExecutor() as executor:
        assert stream_text(tokenizer, outputs, executor) == tokenizer.decode(ids)
    assert executor.submitted == 2
