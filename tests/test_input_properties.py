"""Property-based tests over the model's input schema (the seed's ``input.schema.json``).

Valid inputs are generated from the schema itself; invalid ones by breaking one field of a valid
input. Decoding uses the very type the gateway's route decodes with; the rejections go through
the running gateway, which answers them before anything is queued.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.native.protocol import RunRequest
from tests.conftest import MODEL, Stack, seed_schema

RUN = f"/client/v4/accounts/acct/ai/run/{MODEL}"


def scalar(spec: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A strategy for one scalar property of the schema, within its bounds."""
    low, high = spec.get("minimum"), spec.get("maximum")
    if spec["type"] == "boolean":
        return st.booleans()
    if spec["type"] == "integer":
        return st.integers(min_value=low if low is not None else 1, max_value=high)
    if spec["type"] == "number":
        return st.floats(min_value=low, max_value=high, allow_nan=False, allow_infinity=False)
    assert spec["type"] == "string"
    # Long strings up to the bound are drawn rarely and cheaply (one repeated letter).
    longest = spec.get("maxLength", 64)
    return st.one_of(
        st.text(min_size=spec.get("minLength", 0), max_size=64),
        st.integers(min_value=max(1, longest - 8), max_value=longest).map(lambda n: "a" * n),
    )


MESSAGE = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["system", "user", "assistant", "tool"]),
        "content": st.one_of(st.text(max_size=64), st.just(131072).map(lambda n: "a" * n)),
    }
)
TOOL_PARAMETERS = {"type": "object", "properties": {"city": {"type": "string", "description": "A city"}}}
TOOL = st.sampled_from(
    [
        {"name": "get_weather", "description": "Weather", "parameters": TOOL_PARAMETERS},
        {"type": "function", "function": {"name": "f", "description": "F", "parameters": TOOL_PARAMETERS}},
    ]
)
COMPOSITE: dict[str, st.SearchStrategy[Any]] = {
    "messages": st.lists(MESSAGE, min_size=1, max_size=4),
    "tools": st.lists(TOOL, max_size=2),
    "functions": st.lists(
        st.fixed_dictionaries({"name": st.text(max_size=8), "code": st.text(max_size=16)}), max_size=2
    ),
}


def form(branch: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Inputs of one form (Prompt or Messages): its required fields, any subset of the rest."""
    properties: dict[str, Any] = branch["properties"]
    strategies = {
        name: COMPOSITE[name] if name in COMPOSITE else scalar(spec) for name, spec in properties.items()
    }
    # One deliberate difference: the schema puts no lower bound on max_tokens; Sluice asks for
    # at least 1 (a request for no tokens at all is a client bug worth a clear 400).
    strategies["max_tokens"] = st.integers(min_value=1, max_value=1 << 20)
    required = {name: strategies.pop(name) for name in branch["required"]}
    return st.fixed_dictionaries(required, optional=strategies)


VALID = st.one_of(*(form(b) for b in seed_schema("input.schema.json")["oneOf"]))  # type: ignore[attr-defined]


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(VALID)
def test_every_valid_input_is_accepted(instance: dict[str, Any]) -> None:
    request = msgspec.json.decode(json.dumps(instance), type=RunRequest)
    assert (request.prompt is None) != (request.messages is None)
    for name, value in instance.items():
        if not isinstance(value, (list, dict)):
            assert getattr(request, name) == value


#: For each bounded field, values that break its bound or its type.
BREAKERS: dict[str, st.SearchStrategy[Any]] = {
    "temperature": st.one_of(
        st.floats(min_value=5, exclude_min=True, allow_infinity=False),
        st.floats(max_value=0, exclude_max=True, allow_infinity=False),
        st.text(),
    ),
    "top_p": st.one_of(
        st.floats(min_value=2, exclude_min=True, allow_infinity=False),
        st.floats(max_value=-1e-9, allow_infinity=False),
    ),
    "top_k": st.one_of(
        st.integers(max_value=0),
        st.integers(min_value=51),
        st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not x.is_integer()),
    ),
    "seed": st.one_of(st.integers(max_value=0), st.integers(min_value=10_000_000_000, max_value=2**62)),
    "repetition_penalty": st.one_of(
        st.floats(min_value=2, exclude_min=True, allow_infinity=False),
        st.floats(max_value=-1e-9, allow_infinity=False),
    ),
    "frequency_penalty": st.floats(min_value=2, exclude_min=True, allow_infinity=False),
    "presence_penalty": st.floats(max_value=-1e-9, allow_infinity=False),
    "max_tokens": st.one_of(st.integers(max_value=0), st.text(), st.booleans()),
    "raw": st.one_of(st.integers(), st.lists(st.booleans(), max_size=2)),
    "stream": st.one_of(st.integers(min_value=2), st.none()),
    "prompt": st.one_of(st.just(""), st.integers(), st.just(131_073).map(lambda n: "a" * n)),
    "lora": st.one_of(st.integers(), st.booleans()),
}


@pytest.fixture(scope="module")
def http(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        yield client


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(field=st.sampled_from(sorted(BREAKERS)), data=st.data())
def test_every_broken_field_is_refused_naming_it(http: httpx.Client, field: str, data: st.DataObject) -> None:
    value = data.draw(BREAKERS[field], label=field)
    body = {"prompt": "Hello", "max_tokens": 1, field: value}
    response = http.post(RUN, content=json.dumps(body))
    assert response.status_code == 400, response.text
    (error,) = response.json()["errors"]
    assert error["code"] == 5006
    assert field in error["message"]


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    bad=st.one_of(
        st.just({"role": "user"}),  # content missing
        st.just({"content": "hi"}),  # role missing
        st.fixed_dictionaries({"role": st.just("user"), "content": st.integers()}),
        st.fixed_dictionaries({"role": st.just("user"), "content": st.just(131_073).map(lambda n: "a" * n)}),
    )
)
def test_broken_messages_are_refused_naming_them(http: httpx.Client, bad: dict[str, Any]) -> None:
    response = http.post(RUN, content=json.dumps({"messages": [bad], "max_tokens": 1}))
    assert response.status_code == 400, response.text
    (error,) = response.json()["errors"]
    assert error["code"] == 5006
    assert "messages" in error["message"]
