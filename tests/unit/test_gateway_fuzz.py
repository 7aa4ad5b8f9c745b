"""Property-based fuzzing of the gateway's request handling (hypothesis): whatever JSON arrives, the
answer is a success or an OpenAI-style 4xx error, never a 500, and nothing invalid goes upstream."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.test_gateway_support import MODEL, FakeScheduler, bundle, start_gateway  # noqa: F401  (fixture)

JSON_SCALARS = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=20)
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
FIELDS = ["prompt", "messages", "max_tokens", "temperature", "top_p", "n", "stop", "seed", "stream",
          "logprobs", "top_logprobs", "presence_penalty", "frequency_penalty", "top_k", "min_p",
          "repetition_penalty", "ignore_eos", "stop_token_ids", "stream_options", "user", "max_completion_tokens",
          "chat_template_kwargs", "continue_final_message", "add_generation_prompt",
          # the Responses API's own
          "input", "instructions", "max_output_tokens", "include", "text", "reasoning", "truncation", "background",
          "previous_response_id", "tools", "tool_choice", "metadata", "store"]
BODIES = st.fixed_dictionaries({"model": st.just(MODEL)},
                               optional={f: JSON_VALUES for f in FIELDS}) | JSON_VALUES


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODIES, path=st.sampled_from(["/v1/completions", "/v1/chat/completions", "/v1/responses"]))
async def test_arbitrary_bodies_never_cause_a_server_error(bundle, body, path):  # noqa: F811
    fake = FakeScheduler(bundle)
    client = await start_gateway(fake)
    try:
        response = await client.post(path, data=json.dumps(body, allow_nan=True),
                                     headers={"Content-Type": "application/json"})
        payload = await response.text()
        assert response.status < 500, (body, payload)
        if response.status >= 400:
            error = json.loads(payload)["error"]
            assert error["message"] and error["type"]
    finally:
        await client.close()
