"""Prompt token ids for each endpoint: chat messages through the model's chat template, or text
completion prompts as strings or token ids. Blocking; run in the gateway's executor."""

from __future__ import annotations

import logging
from typing import Any

from gateway.completion_request import CompletionRequest
from gateway.errors import invalid_request
from gateway.model_tokenizer import ModelTokenizer
from gateway.protocol import ChatMessage

log = logging.getLogger(__name__)


def chat_prompt_ids(tokenizer: ModelTokenizer, model: str, messages: list[ChatMessage], param: str = "messages", *,
                    add_generation_prompt: bool = True, continue_final_message: bool = False,
                    template_kwargs: dict[str, Any] | None = None, add_special_tokens: bool = False) -> list[int]:
    """The prompt of a conversation through the model's chat template (which writes its own special
    tokens, so the tokenizer adds none unless asked); `param` names the request field the
    conversation came from, for errors."""
    if not tokenizer.has_chat_template:
        raise invalid_request(f"model `{model}` has no chat template; use /v1/completions", param=param)
    reserved = sorted(set(template_kwargs or {}) & tokenizer.reserved_template_kwargs)
    if reserved:
        raise invalid_request(f"chat_template_kwargs: {reserved[0]!r} is set by the server, not a template "
                              "variable a request may set", param="chat_template_kwargs")
    try:
        text = tokenizer.render_chat([m.for_template() for m in messages], add_generation_prompt=add_generation_prompt,
                                     continue_final_message=continue_final_message, template_kwargs=template_kwargs)
    except Exception as e:  # the template is the model's code; whatever it rejects is the input's shape
        log.info("chat template rejected a conversation: %s", e)
        raise invalid_request(f"{param}: the model's chat template rejected them: {e}", param=param) from None
    ids = tokenizer.encode(text, add_special_tokens=add_special_tokens)
    if not ids:
        raise invalid_request(f"{param}: the conversation renders to an empty prompt", param=param)
    return ids


def refuse_outside_vocabulary(tokenizer: ModelTokenizer, token_ids: list[int], param: str) -> None:
    """A 400 naming `param` when a token id the client sent is not one of the model's."""
    outside = next((t for t in token_ids if t >= tokenizer.vocab_size), None)
    if outside is not None:
        raise invalid_request(f"{param}: token id {outside} is outside the vocabulary (size {tokenizer.vocab_size})",
                              param=param)


def completion_prompt_ids(tokenizer: ModelTokenizer, req: CompletionRequest) -> list[list[int]]:
    prompts: list[list[int]] = []
    for index, prompt in enumerate(req.prompt):
        if isinstance(prompt, str):
            ids = tokenizer.encode(prompt, add_special_tokens=True)
        else:
            ids = prompt
            refuse_outside_vocabulary(tokenizer, ids, "prompt")
        if not ids:
            name = "prompt" if len(req.prompt) == 1 else f"prompt.{index}"
            raise invalid_request(f"{name}: must not be empty", param="prompt")
        prompts.append(ids)
    return prompts
