"""Fuzzing driven by the gateway's own /openapi.json (schemathesis): requests generated from the
document the gateway serves, valid and invalid by it, sent over HTTP to the real app in front of
an in-memory scheduler.

For every case: no 5xx; status code, content type, headers and body are as the document says;
every error is an OpenAI error body whose `param` names a field the operation has. A request the
document allows is served, or refused with a 400 for a rule the document cannot state (vocabulary,
min_tokens against max_tokens, best_of against n); a request it forbids is refused with a 4xx
that names the field the fuzzer broke. Only served generation requests ever reach the scheduler.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode

from gateway.protocol import INT32_MAX
from services.config import GatewaySettings
from tests.unit.served_gateway import served_gateway
from tests.unit.test_gateway_support import MODEL, FakeScheduler, bundle  # noqa: F401  (fixture)

ERROR_FIELDS = {"message", "type", "param", "code"}
TOKENIZATION = ("/tokenize", "/detokenize")
BODY_LIMIT = GatewaySettings.model_fields["max_body_bytes"].default  # the gateway's own default
# Both modes together stay well under a minute on two cores (about 20 ms a case). No shrinking:
# it can take minutes over these bodies, and a failure already reports its case as a curl command.
EXAMPLES = 150
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                phases=[Phase.explicit, Phase.generate, Phase.target],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# Valid by the document but refused: a 400 for a rule it cannot state, a 404 for a model not
# served. Invalid: refused with a 400, or a 413 before it is even read.
CONFIG = {"checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "400", "404", "413"]},
                     "negative_data_rejection": {"expected-statuses": ["400", "413"]}}}


@dataclasses.dataclass
class Served:
    fake: FakeScheduler
    schema: Any
    cases: dict[GenerationMode, st.SearchStrategy[Case]]


@pytest.fixture(scope="module")
def served(bundle) -> Iterator[Served]:  # noqa: F811
    # A context as long as any max_tokens the document allows, so that valid lengths are served
    # and the fuzz reaches the scheduler; the context-length 400s are tested elsewhere.
    fake = FakeScheduler(dataclasses.replace(bundle, max_model_len=INT32_MAX))
    with served_gateway(fake, max_body_bytes=BODY_LIMIT) as url:
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json",
                                               config=schemathesis.Config.from_dict(CONFIG))
        yield Served(fake, schema, {mode: schema.as_strategy(mode) for mode in GenerationMode})


def request_fields(case: Case) -> set[str]:
    """The operation's parameter names and the top-level fields of its request body schema."""
    definition = case.operation.definition.raw
    fields = {p["name"] for p in definition.get("parameters", [])}
    if "requestBody" in definition:
        ref = definition["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        components = case.operation.schema.raw_schema["components"]["schemas"]
        fields |= set(components[ref.rsplit("/", 1)[1]]["properties"])
    return fields


def call_and_count(served: Served, case: Case) -> tuple[Any, int]:
    """Send the case, validate it against the document; the response and the count of upstream
    requests it caused."""
    before = len(served.fake.requests)
    response = case.call_and_validate()
    event(f"{case.operation.label} -> {response.status_code}")  # seen with --hypothesis-show-statistics
    return response, len(served.fake.requests) - before


def assert_openai_error(case: Case, response) -> dict[str, Any]:
    error = response.json()["error"]
    assert set(error) == ERROR_FIELDS, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    if error["param"] is not None:
        assert error["param"].split(".")[0] in request_fields(case), error
    return error


def broken_field(case: Case) -> str | None:
    """Where the fuzzer broke the body ("messages.content.type"), when it broke exactly one field."""
    mutations = case.meta.phase.data.mutations
    if len(mutations) != 1:
        return None
    mutation = mutations[0]
    return fields_only(".".join(str(p) for p in mutation.path)) or mutation.parameter


def fields_only(path: str) -> str:
    """A dotted path without its list indices: the gateway says "messages.0.role", the fuzzer's
    mutation paths sometimes leave the index out."""
    return ".".join(part for part in path.split(".") if part and not part.isdigit())


def names(error: dict[str, Any], field: str) -> bool:
    """The error names `field`: its param is the field or an object on the way to it (a missing
    property is reported at its parent) or inside it, or its message mentions it (a cross-field
    rule, such as top_logprobs needing logprobs, is reported at the other field)."""
    param = fields_only(error["param"] or "")
    return (param == field or field.startswith(f"{param}.") or param.startswith(f"{field}.")
            or field in fields_only(error["message"]))


@FUZZ
@given(data=st.data())
def test_requests_the_document_allows_are_served_or_refused_naming_a_field(served, data):
    case = data.draw(served.cases[GenerationMode.POSITIVE])
    if isinstance(case.body, dict) and "model" in case.body:
        case.body["model"] = MODEL  # any other name is a documented 404, asserted elsewhere
    response, upstream = call_and_count(served, case)
    if response.status_code >= 400:
        error = assert_openai_error(case, response)
        assert error["param"] is not None, error
        assert upstream == 0
    elif case.operation.path in TOKENIZATION:
        assert upstream == 0  # served by the gateway alone
    elif case.operation.method == "post":
        assert upstream >= 1


@FUZZ
@given(data=st.data())
def test_requests_the_document_forbids_are_refused_naming_the_field(served, data):
    case = data.draw(served.cases[GenerationMode.NEGATIVE])
    response, upstream = call_and_count(served, case)
    assert 400 <= response.status_code < 500
    assert upstream == 0
    error = assert_openai_error(case, response)
    field = broken_field(case)
    if field is not None and isinstance(case.body, dict) and response.status_code == 400:
        assert names(error, field), (field, error)
