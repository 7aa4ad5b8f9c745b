"""OpenAI's two logprobs shapes, built from the gateway's TokenLogprobs entries.

Chat: {"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}.
Completions: {tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset}, where each
top_logprobs dict holds the k alternatives plus the sampled token (OpenAI: up to k + 1 entries).
"""

from __future__ import annotations

from typing import Any

from gateway.choice_decoder import TokenChoice, TokenLogprobs


def _chat_token(choice: TokenChoice) -> dict[str, Any]:
    return {"token": choice.token, "logprob": choice.logprob, "bytes": list(choice.bytes)}


def chat_logprobs(entries: list[TokenLogprobs]) -> dict[str, Any]:
    return {"content": [
        {**_chat_token(e.chosen), "top_logprobs": [_chat_token(t) for t in e.top]} for e in entries
    ]}


def completion_logprobs(entries: list[TokenLogprobs]) -> dict[str, Any]:
    top: list[dict[str, float]] = []
    for e in entries:
        alternatives = {t.token: t.logprob for t in e.top}
        alternatives.setdefault(e.chosen.token, e.chosen.logprob)
        top.append(alternatives)
    return {
        "tokens": [e.chosen.token for e in entries],
        "token_logprobs": [e.chosen.logprob for e in entries],
        "top_logprobs": top,
        "text_offset": [e.text_offset for e in entries],
    }
