"""POST /tokenize and /detokenize, as vLLM serves them: a model's own token ids for a text or a
conversation (counted against its context), and the text of token ids.

A conversation is rendered exactly as /v1/chat/completions renders it (the same chat template
options), so `count` is the `prompt_tokens` that a chat request with those messages reports. Both
run on the gateway with the tokenizer a worker registered; no worker is involved.
"""

from __future__ import annotations

import functools

from aiohttp import web
from pydantic import ConfigDict, Field

from gateway.endpoints import parsed_request
from gateway.errors import invalid_request
from gateway.model_tokenizer import ModelTokenizer
from gateway.prompts import chat_prompt_ids, refuse_outside_vocabulary
from gateway.protocol import MAX_MESSAGES, ChatMessage, ChatTemplateFields, StrictModel, TokenId

MAX_DETOKENIZE_TOKENS = 1_000_000


class TokenizeRequest(ChatTemplateFields):
    """Exactly one of `prompt` (a text, special tokens added by default) and `messages` (a
    conversation through the chat template, which writes its own special tokens)."""

    model_config = ConfigDict(json_schema_extra={"oneOf": [
        {"required": ["prompt"], "properties": {"prompt": {"type": "string"}, "messages": {"type": "null"}}},
        {"required": ["messages"], "properties": {"messages": {"type": "array"}, "prompt": {"type": "null"}}}]})

    model: str = Field(min_length=1, max_length=256)
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1, max_length=MAX_MESSAGES)
    add_special_tokens: bool | None = None
    return_token_strs: bool | None = None

    def check(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise invalid_request("prompt: send either `prompt` (a text) or `messages` (a conversation)",
                                  param="prompt")
        if self.messages is not None:
            self.check_template_options(self.messages)


class DetokenizeRequest(StrictModel):
    model: str = Field(min_length=1, max_length=256)
    tokens: list[TokenId] = Field(max_length=MAX_DETOKENIZE_TOKENS)


def token_ids(tokenizer: ModelTokenizer, req: TokenizeRequest) -> list[int]:
    if req.prompt is not None:
        add_special = True if req.add_special_tokens is None else req.add_special_tokens
        return tokenizer.encode(req.prompt, add_special_tokens=add_special)
    return chat_prompt_ids(tokenizer, req.model, req.messages or [], add_special_tokens=bool(req.add_special_tokens),
                           **req.template_options())


async def tokenize(request: web.Request) -> web.Response:
    ctx, req, tokenizer = await parsed_request(request, TokenizeRequest)
    ids = await ctx.run_blocking(token_ids, tokenizer, req)
    strings = await ctx.run_blocking(tokenizer.tokenizer.convert_ids_to_tokens, ids) if req.return_token_strs \
        else None
    return web.json_response({"count": len(ids), "max_model_len": tokenizer.max_model_len, "tokens": ids,
                              "token_strs": strings})


async def detokenize(request: web.Request) -> web.Response:
    ctx, req, tokenizer = await parsed_request(request, DetokenizeRequest)
    refuse_outside_vocabulary(tokenizer, req.tokens, "tokens")
    text = await ctx.run_blocking(functools.partial(tokenizer.decode, req.tokens, skip_special_tokens=False))
    return web.json_response({"prompt": text})
