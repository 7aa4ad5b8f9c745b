"""Prompt token ids for each endpoint: chat messages through the model's chat template, or text
completion prompts as strings or token ids. Blocking; run in the gateway's executor."""

from __future__ import annotations

import logging

from gateway.errors import invalid_request
from gateway.model_tokenizer import ModelTokenizer
from gateway.protocol import ChatCompletionRequest, CompletionRequest

log = logging.getLogger(__name__)


def chat_prompt_ids(tokenizer: ModelTokenizer, req: ChatCompletionRequest) -> list[int]:
    if not tokenizer.has_chat_template:
        raise invalid_request(f"model `{req.model}` has no chat template; use /v1/completions",
                              param="messages")
    try:
        text = tokenizer.render_chat([m.for_template() for m in req.messages])
    except Exception as e:  # the template is the model's code; whatever it rejects is the input's shape
        log.info("chat template rejected a conversation: %s", e)
        raise invalid_request(f"messages: the model's chat template rejected them: {e}",
                              param="messages") from None
    ids = tokenizer.encode(text, add_special_tokens=False)
    if not ids:
        raise invalid_request("messages: the conversation renders to an empty prompt", param="messages")
    return ids


def completion_prompt_ids(tokenizer: ModelTokenizer, req: CompletionRequest) -> list[list[int]]:
    prompts: list[list[int]] = []
    for index, prompt in enumerate(req.prompt):
        if isinstance(prompt, str):
            ids = tokenizer.encode(prompt, add_special_tokens=True)
        else:
            ids = prompt
            outside = next((t for t in ids if t >= tokenizer.vocab_size), None)
            if outside is not None:
                raise invalid_request(f"prompt: token id {outside} is outside the vocabulary "
                                      f"(size {tokenizer.vocab_size})", param="prompt")
        if not ids:
            name = "prompt" if len(req.prompt) == 1 else f"prompt.{index}"
            raise invalid_request(f"{name}: must not be empty", param="prompt")
        prompts.append(ids)
    return prompts
