"""Tools, JSON mode, request options and input errors of the Workers AI API, through the real
`cloudflare` SDK and raw HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import cloudflare
import httpx
import jsonschema
import pytest
import redis

from sluice.contract import queue_key
from tests.conftest import MODEL, Stack

WEATHER_LEGACY = {
    "name": "get_weather",
    "description": "Get the current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "The city"}},
        "required": ["city"],
    },
}
RUN = f"/client/v4/accounts/acct/ai/run/{MODEL}"
CITY = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
    "required": ["city", "country"],
}


@pytest.fixture
def client(stack: Stack) -> cloudflare.Cloudflare:
    return cloudflare.Cloudflare(api_token="unused", base_url=f"{stack.url}/client/v4", max_retries=0)


@pytest.fixture
def http(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=60) as client:
        yield client


def error_of(response: httpx.Response) -> dict[str, object]:
    (error,) = response.json()["errors"]
    assert isinstance(error, dict)
    return error


@pytest.mark.parametrize("shape", ["legacy", "openai"])
def test_tool_calls_in_the_documented_shape(client: cloudflare.Cloudflare, shape: str) -> None:
    tool = WEATHER_LEGACY if shape == "legacy" else {"type": "function", "function": WEATHER_LEGACY}
    result = client.ai.run(
        MODEL,
        account_id="acct",
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[tool],  # type: ignore[list-item]
        temperature=0,
        max_tokens=64,
        extra_body={"tool_choice": "required"},
    )
    assert isinstance(result, dict)
    (call,) = result["tool_calls"]
    assert call["name"] == "get_weather"
    assert isinstance(call["arguments"], dict)
    assert isinstance(call["arguments"]["city"], str)


def test_tool_result_turn_is_answered(client: cloudflare.Cloudflare) -> None:
    call = {"name": "get_weather", "arguments": {"city": "Paris"}}
    result = client.ai.run(
        MODEL,
        account_id="acct",
        messages=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": json.dumps(call)},
            {"role": "tool", "content": json.dumps({"temperature_c": 21})},
        ],
        temperature=0,
        max_tokens=24,
    )
    assert isinstance(result, dict)
    assert result["response"]


def test_json_mode_response_is_an_object(client: cloudflare.Cloudflare) -> None:
    result = client.ai.run(
        MODEL,
        account_id="acct",
        prompt="Name a city in Japan and its country, as JSON.",
        response_format={"type": "json_schema", "json_schema": CITY},
        temperature=0,
        max_tokens=48,
    )
    assert isinstance(result, dict)
    jsonschema.validate(result["response"], CITY)


def test_json_mode_refuses_streaming(http: httpx.Client) -> None:
    body = {"prompt": "JSON please", "stream": True, "response_format": {"type": "json_object"}}
    response = http.post(RUN, json=body)
    assert response.status_code == 400
    assert error_of(response)["code"] == 5006
    assert "stream" in str(error_of(response)["message"])


def test_unknown_property_is_refused_by_name(http: httpx.Client) -> None:
    response = http.post(RUN, json={"prompt": "hi", "width": 3})
    assert response.status_code == 400
    assert "width" in str(error_of(response)["message"])


def test_unknown_lora_is_named(http: httpx.Client) -> None:
    response = http.post(RUN, json={"prompt": "hi", "lora": "my-adapter"})
    assert response.status_code == 400
    assert "my-adapter" in str(error_of(response)["message"])


def test_context_window_is_enforced(http: httpx.Client) -> None:
    response = http.post(RUN, json={"prompt": "Hello", "max_tokens": 7968})
    assert response.status_code == 413
    error = error_of(response)
    assert error["code"] == 5021
    assert "7968" in str(error["message"])


def test_reject_if_busy(http: httpx.Client, stack: Stack) -> None:
    body = {"prompt": "Say hi.", "max_tokens": 2, "options": {"rejectIfBusy": True}}
    assert http.post(RUN, json=body).status_code == 200
    # A job waiting in the queue means every worker slot is taken. Its start time is far in the
    # future, so no worker picks it up while the test runs.
    queue = queue_key(MODEL)
    with redis.Redis.from_url(stack.redis_url) as r:
        r.zadd(queue, {"placeholder-job": int(time.time() * 1000) + 3_600_000})
        try:
            response = http.post(RUN, json=body)
        finally:
            r.zrem(queue, "placeholder-job")
    assert response.status_code == 429
    error = error_of(response)
    assert error["code"] == 3040
    assert error["message"] == "AiError: Capacity temporarily exceeded, please try again."


def test_functions_field_is_accepted(http: httpx.Client) -> None:
    body = {
        "messages": [{"role": "user", "content": "Say hi."}],
        "functions": [{"name": "f", "code": "return 1"}],
        "max_tokens": 2,
    }
    assert http.post(RUN, json=body).status_code == 200


def test_body_content_type(http: httpx.Client) -> None:
    body = json.dumps({"prompt": "Say hi.", "max_tokens": 2})
    # curl -d sends form-urlencoded; the Workers AI docs' curl examples rely on JSON being read anyway.
    sent_by_curl = http.post(RUN, content=body, headers={"content-type": "application/x-www-form-urlencoded"})
    assert sent_by_curl.status_code == 200
    form = http.post(RUN, files={"prompt": (None, "Say hi.")})
    assert form.status_code == 400
    assert "multipart/form-data" in str(error_of(form)["message"])


def test_tool_calls_stream_as_a_frame(http: httpx.Client) -> None:
    body = {
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [WEATHER_LEGACY],
        "tool_choice": "required",
        "stream": True,
        "temperature": 0,
        "max_tokens": 64,
    }
    with http.stream("POST", RUN, json=body) as response:
        assert response.status_code == 200
        events = response.read().decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    frames = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    (call,) = next(f["tool_calls"] for f in frames if "tool_calls" in f)
    assert call["name"] == "get_weather"
    assert "city" in call["arguments"]
    assert "usage" in frames[-1]
