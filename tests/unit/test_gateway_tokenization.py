"""POST /tokenize and /detokenize (vLLM's): the model's own ids for a text or a conversation, the
same prompt a chat request gets, the text back from ids; refusals name the field; no worker is
asked; a configured API key guards them as it guards /v1/*."""

from __future__ import annotations

import pytest

from tests.unit.test_gateway_app import post
from tests.unit.test_gateway_support import (  # noqa: F401  (bundle, tokenizer: fixtures)
    MODEL,
    FakeScheduler,
    bundle,
    start_gateway,
    tokenizer,
)

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]


async def answers(bundle, calls: list[tuple[str, dict]], **settings) -> tuple[list[tuple[int, dict]], FakeScheduler]:
    fake = FakeScheduler(bundle)
    client = await start_gateway(fake, **settings)
    try:
        results = []
        for path, body in calls:
            response = await post(client, path, body)
            results.append((response.status, await response.json()))
    finally:
        await client.close()
    return results, fake


async def test_a_text_is_tokenized_as_completions_encode_it(bundle, tokenizer):
    text = "Return the number of items, café 😀"
    (ok, plain), fake = await answers(bundle, [
        ("/tokenize", {"model": MODEL, "prompt": text, "return_token_strs": True}),
        ("/tokenize", {"model": MODEL, "prompt": text, "add_special_tokens": False})])
    assert ok == (200, {"count": len(tokenizer.encode(text, True)), "max_model_len": bundle.max_model_len,
                        "tokens": tokenizer.encode(text, True),
                        "token_strs": tokenizer.tokenizer.convert_ids_to_tokens(tokenizer.encode(text, True))})
    assert plain[1]["tokens"] == tokenizer.encode(text, False)
    assert fake.requests == []


async def test_a_conversation_counts_what_a_chat_request_reports_as_prompt_tokens(bundle, tokenizer):
    (tokenized, chat, continued), _ = await answers(bundle, [
        ("/tokenize", {"model": MODEL, "messages": MESSAGES}),
        ("/v1/chat/completions", {"model": MODEL, "messages": MESSAGES, "max_tokens": 3}),
        ("/tokenize", {"model": MODEL, "continue_final_message": True,
                       "messages": [*MESSAGES, {"role": "assistant", "content": "Hello, my"}]})])
    assert tokenized[0] == 200 and chat[0] == 200
    assert tokenized[1]["count"] == chat[1]["usage"]["prompt_tokens"]
    assert tokenized[1]["tokens"] == tokenizer.encode(tokenizer.render_chat(MESSAGES), False)
    assert tokenizer.decode(continued[1]["tokens"]).endswith("Hello, my")


async def test_ids_detokenize_to_their_text_with_special_tokens(bundle, tokenizer):
    ids = tokenizer.encode(tokenizer.render_chat(MESSAGES), False)
    (detokenized,), _ = await answers(bundle, [("/detokenize", {"model": MODEL, "tokens": ids})])
    assert detokenized == (200, {"prompt": tokenizer.render_chat(MESSAGES)})


@pytest.mark.parametrize("path, body, status, param", [
    ("/tokenize", {"model": MODEL}, 400, "prompt"),
    ("/tokenize", {"model": MODEL, "prompt": "x", "messages": MESSAGES}, 400, "prompt"),
    ("/tokenize", {"model": MODEL, "messages": MESSAGES, "continue_final_message": True}, 400,
     "continue_final_message"),
    ("/tokenize", {"model": MODEL, "messages": MESSAGES, "chat_template_kwargs": {"tokenize": False}}, 400,
     "chat_template_kwargs"),
    ("/detokenize", {"model": MODEL, "tokens": [1, 10**8]}, 400, "tokens"),
    ("/detokenize", {"model": MODEL, "tokens": [-1]}, 400, "tokens.0"),
    ("/detokenize", {"model": "no-such-model", "tokens": [1]}, 404, "model"),
])
async def test_bad_requests_are_refused_naming_the_field(bundle, path, body, status, param):
    ((code, answer),), _ = await answers(bundle, [(path, body)])
    assert code == status and answer["error"]["param"] == param, answer


async def test_a_configured_key_is_required(bundle):
    results, _ = await answers(bundle, [("/tokenize", {"model": MODEL, "prompt": "x"}),
                                        ("/detokenize", {"model": MODEL, "tokens": [1]})], api_key="secret")
    assert [(code, answer["error"]["code"]) for code, answer in results] == [(401, "invalid_api_key")] * 2
