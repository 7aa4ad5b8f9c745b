"""vLLM's chat-template extras on /v1/chat/completions: `continue_final_message`,
`add_generation_prompt` and `chat_template_kwargs` change the prompt the worker gets exactly as
transformers' apply_chat_template renders it; misuse is a 400 that names the field."""

from __future__ import annotations

import dataclasses
import json

import pytest

from gateway.model_tokenizer import ModelTokenizer
from tests.unit.test_gateway_app import post
from tests.unit.test_gateway_support import (  # noqa: F401  (bundle, tokenizer: fixtures)
    MODEL,
    FakeScheduler,
    bundle,
    start_gateway,
    tokenizer,
)

TURNS = [{"role": "user", "content": "Say hello"}, {"role": "assistant", "content": "Hello, my name"}]
# Qwen3's switch, reduced to what matters: an empty thought when thinking is turned off.
THINKING_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                     "{% if add_generation_prompt %}<|im_start|>assistant\n"
                     "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}"
                     "{% endif %}")


async def prompt_sent(bundle, body: dict) -> tuple[int, dict, list[int] | None]:
    """Status and body of a chat request, and the prompt the worker got (None: nothing went up)."""
    fake = FakeScheduler(bundle)
    client = await start_gateway(fake)
    try:
        response = await post(client, "/v1/chat/completions", {"model": MODEL, "max_tokens": 3} | body)
        answer = await response.json()
    finally:
        await client.close()
    return response.status, answer, fake.requests[0].prompt_token_ids if fake.requests else None


def with_template(bundle, template: str):
    config = json.loads(bundle.files["tokenizer_config.json"]) | {"chat_template": template}
    return dataclasses.replace(bundle, files=bundle.files | {"chat_template.jinja": template.encode(),
                                                             "tokenizer_config.json": json.dumps(config).encode()})


async def test_continue_final_message_continues_the_assistants_words(bundle, tokenizer):
    status, answer, prompt = await prompt_sent(bundle, {"messages": TURNS, "continue_final_message": True})
    assert status == 200, answer
    text = tokenizer.tokenizer.apply_chat_template(TURNS, tokenize=False, continue_final_message=True)
    assert text.endswith("Hello, my name")  # no end-of-turn: the model goes on from there
    assert prompt == tokenizer.encode(text, False)


async def test_without_a_generation_prompt_the_conversation_ends_as_it_is(bundle, tokenizer):
    messages = TURNS[:1]
    status, _, prompt = await prompt_sent(bundle, {"messages": messages, "add_generation_prompt": False})
    default_status, _, default_prompt = await prompt_sent(bundle, {"messages": messages})
    assert (status, default_status) == (200, 200)
    assert prompt == tokenizer.encode(tokenizer.render_chat(messages, add_generation_prompt=False), False)
    assert default_prompt == tokenizer.encode(tokenizer.render_chat(messages), False)
    assert prompt != default_prompt


async def test_chat_template_kwargs_reach_the_template(bundle):
    templated = with_template(bundle, THINKING_TEMPLATE)
    messages = TURNS[:1]
    _, _, thinking = await prompt_sent(templated, {"messages": messages})
    status, answer, not_thinking = await prompt_sent(templated, {"messages": messages,
                                                                 "chat_template_kwargs": {"enable_thinking": False}})
    assert status == 200, answer
    own = ModelTokenizer(templated)
    assert thinking == own.encode(own.render_chat(messages), False)
    assert not_thinking == own.encode(own.render_chat(messages, template_kwargs={"enable_thinking": False}), False)
    assert own.tokenizer.decode(not_thinking).endswith("<think>\n\n</think>\n\n")
    assert not own.tokenizer.decode(thinking).endswith("</think>\n\n")


@pytest.mark.parametrize("fields, param, words", [
    ({"messages": TURNS, "continue_final_message": True, "add_generation_prompt": True},
     "continue_final_message", "add_generation_prompt"),
    ({"messages": TURNS[:1], "continue_final_message": True}, "continue_final_message", "assistant"),
    ({"messages": TURNS[:1], "chat_template_kwargs": {"tokenize": True}}, "chat_template_kwargs", "'tokenize'"),
    ({"messages": TURNS[:1], "chat_template_kwargs": {"messages": []}}, "chat_template_kwargs", "'messages'"),
    ({"messages": TURNS[:1], "chat_template_kwargs": ["enable_thinking"]}, "chat_template_kwargs", ""),
])
async def test_misuse_is_refused_naming_the_field(bundle, fields, param, words):
    status, answer, prompt = await prompt_sent(bundle, fields)
    assert status == 400 and prompt is None
    assert answer["error"]["param"] == param and words in answer["error"]["message"], answer
