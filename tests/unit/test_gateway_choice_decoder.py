"""ChoiceDecoder: text, stop strings, logprobs and token counts of one choice stay consistent."""

from __future__ import annotations

from gateway.choice_decoder import ChoiceDecoder
from services.types import PositionLogprobs, RequestOutput, TokenLogprob
from tests.unit.test_gateway_support import bundle, tokenizer  # noqa: F401  (fixtures)


def output(ids: list[int], finish: str = "", with_logprobs: bool = True) -> RequestOutput:
    logprobs = [PositionLogprobs(TokenLogprob(t, -0.5)) for t in ids] if with_logprobs else []
    return RequestOutput("r", ids, logprobs, finish)


def test_stop_string_across_tokens_reports_only_tokens_before_the_cut(tokenizer):
    ids = tokenizer.encode("Result: 42 END trailing words", False)
    decoder = ChoiceDecoder(0, tokenizer, [], [" END"], with_logprobs=True)
    deltas = []
    for token_id in ids:  # as the gateway does: stop consuming at the first finished delta
        deltas.append(decoder.consume(output([token_id])))
        if deltas[-1].finish_reason:
            break
    assert deltas[-1].finish_reason == "stop" and len(deltas) < len(ids)
    text = "".join(d.text for d in deltas)
    reported = [e for d in deltas for e in d.logprobs]
    assert text == "Result: 42"
    assert "".join(e.chosen.token for e in reported) == text
    assert [e.text_offset for e in reported] == [len(tokenizer.decode(ids[:i])) for i in range(len(reported))]
    assert deltas[-1].completion_tokens == len(deltas)


def test_text_held_for_a_possible_stop_is_released_at_the_end(tokenizer):
    ids = tokenizer.encode("almost EN", False)
    decoder = ChoiceDecoder(0, tokenizer, [], ["END"], with_logprobs=True)
    first = decoder.consume(output(ids[:-1]))
    last = decoder.consume(output(ids[-1:], finish="length"))
    assert first.text + last.text == "almost EN"
    assert last.finish_reason == "length" and last.completion_tokens == len(ids)
    assert len(first.logprobs) + len(last.logprobs) == len(ids)


def test_worker_stop_reason_and_cached_tokens_pass_through(tokenizer):
    decoder = ChoiceDecoder(3, tokenizer, [1, 2], [], with_logprobs=False)
    delta = decoder.consume(RequestOutput("r", tokenizer.encode("hi", False), [], "stop", cached_tokens=16))
    assert (delta.index, delta.text, delta.finish_reason, delta.cached_tokens) == (3, "hi", "stop", 16)
    assert delta.logprobs == []
