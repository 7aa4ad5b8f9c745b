"""One choice's pipeline: token ids -> incremental text -> stop strings -> deltas with logprobs.

Blocking (it calls the tokenizer): the gateway runs `consume` on its loop only for increments of a
few tokens (generation.INLINE_DECODE_WORK), otherwise in its executor. Invariants: the
texts of all deltas joined are the choice's final text; a token's logprob entry is released with
(or after) the text it produced, and on a stop-string match only tokens whose text starts before
the cut are reported; `completion_tokens` counts every token consumed up to and including the one
that completed a stop string.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from gateway.detokenizer import IncrementalDetokenizer
from gateway.model_tokenizer import ModelTokenizer
from gateway.stop_strings import StopStringMatcher
from services.types import FINISH_STOP, PositionLogprobs, RequestOutput

# JSON has no -Infinity; OpenAI and vLLM report "impossible" as -9999.
MIN_LOGPROB = -9999.0


def _finite(logprob: float) -> float:
    return MIN_LOGPROB if math.isnan(logprob) or logprob < MIN_LOGPROB else logprob


@dataclass
class TokenChoice:
    """A token as logprobs report it: its text, raw bytes and logprob."""

    token: str
    bytes: bytes
    logprob: float


@dataclass
class TokenLogprobs:
    chosen: TokenChoice
    top: list[TokenChoice]
    text_offset: int  # where the token's text starts in the choice's text


@dataclass
class ChoiceDelta:
    index: int
    text: str = ""
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    finish_reason: str | None = None
    new_tokens: int = 0
    completion_tokens: int = 0  # cumulative for the choice
    cached_tokens: int = 0

    @property
    def empty(self) -> bool:
        return not self.text and not self.logprobs and self.finish_reason is None


class ChoiceDecoder:
    def __init__(self, index: int, tokenizer: ModelTokenizer, prompt_token_ids: list[int],
                 stop_strings: list[str], with_logprobs: bool):
        self.index = index
        self._tokenizer = tokenizer
        self._detokenizer = IncrementalDetokenizer(tokenizer.decode, prompt_token_ids)
        self._stops = StopStringMatcher(stop_strings)
        self._with_logprobs = with_logprobs
        self._decoded_len = 0  # characters produced by the detokenizer so far
        self._emitted_len = 0  # characters released to the client so far
        self._pending: deque[tuple[int, int, TokenLogprobs]] = deque()  # (start, end, entry)
        self._tokens = 0
        self._cached_tokens = 0

    def consume(self, output: RequestOutput) -> ChoiceDelta:
        """Turn one upstream increment into the delta the client may see now."""
        self._cached_tokens = max(self._cached_tokens, output.cached_tokens)
        delta = ChoiceDelta(self.index)
        parts: list[str] = []
        for position, token_id in enumerate(output.token_ids):
            self._tokens += 1
            delta.new_tokens += 1
            piece = self._detokenizer.push(token_id)
            self._track(token_id, piece, output.logprobs[position] if position < len(output.logprobs) else None)
            parts.append(self._release(self._stops.feed(piece)))
            if self._stops.matched is not None:
                break
        if self._stops.matched is not None:
            delta.finish_reason = FINISH_STOP
        elif output.finish_reason:
            tail = self._detokenizer.finish()
            self._decoded_len += len(tail)
            parts.append(self._release(self._stops.feed(tail)))
            if self._stops.matched is None:
                parts.append(self._release(self._stops.flush()))
            delta.finish_reason = FINISH_STOP if self._stops.matched is not None else output.finish_reason
        delta.text = "".join(parts)
        delta.logprobs = self._released_logprobs(finished=delta.finish_reason is not None)
        delta.completion_tokens = self._tokens
        delta.cached_tokens = self._cached_tokens
        return delta

    def _track(self, token_id: int, piece: str, position: PositionLogprobs | None) -> None:
        start = self._decoded_len
        self._decoded_len += len(piece)
        if self._with_logprobs and position is not None:
            entry = TokenLogprobs(self._token_choice(token_id, position.chosen.logprob),
                                  [self._token_choice(t.token_id, t.logprob) for t in position.top],
                                  start)
            self._pending.append((start, self._decoded_len, entry))

    def _token_choice(self, token_id: int, logprob: float) -> TokenChoice:
        text, raw = self._tokenizer.texts.of(token_id)
        return TokenChoice(text, raw, _finite(logprob))

    def _release(self, text: str) -> str:
        self._emitted_len += len(text)
        return text

    def _released_logprobs(self, finished: bool) -> list[TokenLogprobs]:
        released = []
        while self._pending:
            start, end, entry = self._pending[0]
            if finished and self._stops.matched is not None:
                if start >= self._emitted_len:
                    break
            elif not finished and end > self._emitted_len:
                break
            released.append(self._pending.popleft()[2])
        if finished:
            self._pending.clear()
        return released
