"""Limits on what a request carries: each refused with its own clear error, never a 500."""

from __future__ import annotations

import httpx
import pytest

from sluice.contract import MAX_MESSAGES
from tests.conftest import MODEL, Stack

NATIVE = f"/client/v4/accounts/acct/ai/run/{MODEL}"
TOO_MANY = [{"role": "user", "content": "hi"}] * (MAX_MESSAGES + 1)


@pytest.mark.parametrize(
    ("path", "body"),
    [(NATIVE, {"messages": TOO_MANY}), ("/v1/chat/completions", {"model": MODEL, "messages": TOO_MANY})],
)
def test_too_many_messages_is_a_bad_request(
    synthetic_stack: Stack, path: str, body: dict[str, object]
) -> None:
    response = httpx.post(synthetic_stack.url + path, json=body, timeout=30)
    assert response.status_code == 400
    assert f"length <= {MAX_MESSAGES}" in response.text


@pytest.mark.parametrize(("path", "envelope"), [(NATIVE, "errors"), ("/v1/chat/completions", "error")])
def test_oversized_headers_are_431_in_the_routes_envelope(
    synthetic_stack: Stack, path: str, envelope: str
) -> None:
    body = {"model": MODEL, "prompt": "Hi", "messages": [{"role": "user", "content": "Hi"}]}
    response = httpx.post(
        synthetic_stack.url + path, json=body, headers={"x-padding": "a" * 40_000}, timeout=30
    )
    assert response.status_code == 431
    assert envelope in response.json()
    assert "header fields too large" in response.text
