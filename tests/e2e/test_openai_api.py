"""The OpenAI API as the official client sees it, against separately started processes."""

from __future__ import annotations

import openai
import pytest
from transformers import AutoTokenizer

from tests.e2e.conftest import API_KEY

MODEL = "tiny-llama"
PROMPT = "The history of the"


def test_models_list(client):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    assert models[0].owned_by and models[0].created > 0


def test_chat_completion(client):
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello there"}],
                                       max_tokens=12, temperature=0)
    choice = r.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 3 and 0 < r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_stream_with_usage_matches_non_streaming(client):
    messages = [{"role": "user", "content": "Tell me a story"}]
    full = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20, temperature=0)
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_completion_streaming_and_not_agree(client):
    full = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16, temperature=0)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=16, temperature=0, stream=True))
    assert streamed == full.choices[0].text and len(full.choices[0].text) > 0


def test_n_choices_and_prompt_lists(client):
    r = client.completions.create(model=MODEL, prompt=[PROMPT, "Once upon a time"], n=2, max_tokens=8,
                                  temperature=0.8, seed=1)
    assert sorted(c.index for c in r.choices) == [0, 1, 2, 3]
    assert r.usage.completion_tokens >= 4  # every choice produced at least one token
    single = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=1)
    other = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=1)
    # prompt tokens count once per prompt, not once per choice
    assert r.usage.prompt_tokens == single.usage.prompt_tokens + other.usage.prompt_tokens


def test_stop_string_is_cut_exactly(client):
    base = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=40, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text
    assert len(base) > 12, base
    stop = base[6:10]
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=40, temperature=0, stop=[stop],
                                  extra_body={"ignore_eos": True})
    assert r.choices[0].text == base[:base.index(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_completion_logprobs(client):
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == r.usage.completion_tokens
    # A request that ends on EOS reports that token's logprob too (as vLLM does); it adds no text.
    shown = lp.tokens[:-1] if r.choices[0].finish_reason == "stop" else lp.tokens
    assert "".join(shown) == r.choices[0].text
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert len(top) <= 2 and chosen <= 0 and max(top.values()) == pytest.approx(chosen, abs=1e-4)


def test_chat_logprobs(client):
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
                                       temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content)


def test_logit_bias_forces_a_token(client, tiny_llama_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    forced = tokenizer.encode(" license", add_special_tokens=False)[0]
    plain = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0,
                                      extra_body={"ignore_eos": True})
    biased = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0,
                                       logit_bias={str(forced): 100}, extra_body={"ignore_eos": True})
    expected = tokenizer.decode([forced] * 4, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert biased.choices[0].text == expected != plain.choices[0].text


@pytest.mark.parametrize("kwargs, param", [
    ({"temperature": 5}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"max_tokens": -1}, "max_tokens"),
    ({"n": 0}, "n"),
])
def test_invalid_parameters_are_400(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=MODEL, prompt=PROMPT, **kwargs)
    assert param in str(err.value)


def test_empty_messages_are_400(client):
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model=MODEL, messages=[])


def test_context_overflow_says_the_numbers(client, cluster):
    max_len = client.models.list().data[0].model_extra.get("max_model_len")
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=max_len)
    assert str(max_len) in str(err.value)


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt=PROMPT)


def test_missing_or_wrong_key_is_401(cluster):
    for key in ("wrong", ""):
        bad = openai.OpenAI(base_url=cluster.base_url, api_key=key or "x", max_retries=0,
                            default_headers={} if key else {"Authorization": ""})
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()


def test_oversized_body_is_413(client):
    with pytest.raises(openai.APIStatusError) as err:
        client.completions.create(model=MODEL, prompt="x" * (5 * 1024 * 1024), max_tokens=1)
    assert err.value.status_code == 413


def test_health_and_ping_stay_open(cluster):
    import json
    import urllib.request

    with urllib.request.urlopen(cluster.gateway_url + "/ping", timeout=5) as r:
        assert r.status == 200
    with urllib.request.urlopen(cluster.gateway_url + "/health", timeout=5) as r:
        health = json.loads(r.read())
    assert health["status"] == "ok" and health["workers"] == {MODEL: 1}
    assert health["uptime_seconds"] > 0 and health["total_requests"] >= 0
    assert API_KEY not in json.dumps(health)


def test_responses_api_answers_as_chat_does(client):
    """The same conversation through /v1/responses and /v1/chat/completions: the same greedy text
    and prompt length; the stream's deltas add up to it."""
    chat = client.chat.completions.create(model=MODEL, max_tokens=16, temperature=0, messages=[
        {"role": "system", "content": "You are brief."}, {"role": "user", "content": "Tell me a story"}])
    response = client.responses.create(model=MODEL, instructions="You are brief.", input="Tell me a story",
                                       max_output_tokens=16, temperature=0)
    assert response.output_text == chat.choices[0].message.content and response.output_text
    assert response.usage.input_tokens == chat.usage.prompt_tokens
    assert response.usage.output_tokens == chat.usage.completion_tokens
    assert response.status == ("incomplete" if chat.choices[0].finish_reason == "length" else "completed")
    events = list(client.responses.create(model=MODEL, instructions="You are brief.", input="Tell me a story",
                                          max_output_tokens=16, temperature=0, stream=True))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == response.output_text
    assert events[-1].type == f"response.{response.status}"


def test_tokenize_counts_the_prompt_tokens_a_chat_request_reports(client, cluster):
    """vLLM's /tokenize and /detokenize, with the key, against the running cluster."""
    import json
    import urllib.error
    import urllib.request

    def call(path: str, body: dict, key: str | None = API_KEY) -> dict:
        request = urllib.request.Request(cluster.gateway_url + path, data=json.dumps(body).encode(), headers={
            "Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    messages = [{"role": "user", "content": "Tell me a story"}]
    chat = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=1)
    tokenized = call("/tokenize", {"model": MODEL, "messages": messages})
    assert tokenized["count"] == len(tokenized["tokens"]) == chat.usage.prompt_tokens
    assert "Tell me a story" in call("/detokenize", {"model": MODEL, "tokens": tokenized["tokens"]})["prompt"]
    with pytest.raises(urllib.error.HTTPError) as refused:
        call("/tokenize", {"model": MODEL, "prompt": "x"}, key=None)
    assert refused.value.code == 401
