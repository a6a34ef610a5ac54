"""The Workers AI wire format, byte for byte, over plain HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import MODEL, Stack


@pytest.fixture
def http(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=60) as client:
        yield client


RUN = f"/client/v4/accounts/acct/ai/run/{MODEL}"


def error_of(response: httpx.Response) -> dict[str, object]:
    body = response.json()
    assert body["success"] is False
    assert body["result"] is None
    assert body["messages"] == []
    (error,) = body["errors"]
    assert isinstance(error, dict)
    return error


@pytest.mark.parametrize("path", [RUN, RUN.replace("@cf/meta/", "@cf%2Fmeta%2F")])
def test_model_path_with_literal_or_encoded_slashes(http: httpx.Client, path: str) -> None:
    response = http.post(path, json={"prompt": "Say hello.", "max_tokens": 4})
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True
    assert body["errors"] == []
    assert body["messages"] == []
    assert body["result"]["usage"]["completion_tokens"] <= 4
    assert response.headers["cf-ai-req-id"]


def test_sse_frames(http: httpx.Client) -> None:
    with http.stream("POST", RUN, json={"prompt": "Count to five.", "stream": True, "max_tokens": 12}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == ""
    assert events[-2] == "data: [DONE]"
    frames = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    # Every frame carries `response` (LangChain's parser indexes it unconditionally).
    assert all(isinstance(f["response"], str) for f in frames)
    assert all("usage" not in f for f in frames[:-1])
    assert frames[-1]["response"] == ""
    usage = frames[-1]["usage"]
    assert 0 < usage["completion_tokens"] <= 12
    assert "".join(f["response"] for f in frames)


def test_default_max_tokens_is_256(synthetic_stack: Stack) -> None:
    # The synthetic engine always writes max_tokens tokens: exactly the default when none is given.
    body = {"prompt": "Write a very long essay about the history of the Roman empire."}
    result = httpx.post(synthetic_stack.url + RUN, json=body, timeout=60).json()["result"]
    assert result["usage"]["completion_tokens"] == 256


def test_malformed_json(http: httpx.Client) -> None:
    response = http.post(
        RUN, content=b'{"prompt": "unterminated', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == 5006
    assert "malformed JSON" in str(error["message"])


@pytest.mark.parametrize(
    "body",
    [{}, {"max_tokens": 5}, {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}],
    ids=["empty", "neither", "both"],
)
def test_exactly_one_of_prompt_or_messages(http: httpx.Client, body: dict[str, object]) -> None:
    response = http.post(RUN, json=body)
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == 5006
    assert "prompt" in str(error["message"])
    assert "messages" in str(error["message"])


@pytest.mark.parametrize(
    ("field", "value"),
    [("temperature", 5.5), ("top_k", 51), ("seed", 0), ("prompt", ""), ("max_tokens", "many")],
)
def test_out_of_bounds_field_is_named(http: httpx.Client, field: str, value: object) -> None:
    body = {"prompt": "hello", field: value}
    response = http.post(RUN, json=body)
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == 5006
    assert field in str(error["message"])


def test_unknown_model(http: httpx.Client) -> None:
    response = http.post("/client/v4/accounts/acct/ai/run/@cf/meta/llama-9-instruct", json={"prompt": "hi"})
    assert response.status_code == 400
    assert error_of(response)["code"] == 5007


def test_wrong_method(http: httpx.Client) -> None:
    response = http.get(RUN)
    assert response.status_code == 405
    assert error_of(response)["code"] == 7001


def test_unknown_route(http: httpx.Client) -> None:
    response = http.post("/client/v4/accounts/acct/ai/nothing-here", json={})
    assert response.status_code == 404
    assert error_of(response)["code"] == 7000


def test_openai_route_errors_use_openai_shape(http: httpx.Client) -> None:
    response = http.post("/v1/chat/completions", content=b"not json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "malformed JSON" in error["message"]


def test_health_and_readiness(http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["workers"] >= 1


def test_body_over_the_limit_is_413(http: httpx.Client) -> None:
    response = http.post(RUN, json={"prompt": "x" * 1_100_000})
    assert response.status_code == 413
    assert error_of(response)["code"] == 3006
