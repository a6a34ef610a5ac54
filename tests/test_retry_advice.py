"""The SDKs retry a 408, 429 or 5xx on their own unless the response says not to: an error
that would only recur (a request that stopped its workers on every try) must say so, or each
call of it is sent three times."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import cloudflare
import httpx
import openai
import pytest
from litestar import Litestar, post
from litestar.testing import TestClient

from gateway.errors import render
from sluice.errors import SluiceError, out_of_tries, queue_unavailable

RUN = "/client/v4/accounts/acct/ai/run/@cf/meta/llama-3.1-8b-instruct"


class Failing:
    """A route that fails with ``error``, counting the calls it gets."""

    def __init__(self, error: SluiceError) -> None:
        self.error = error
        self.calls = 0

    def app(self) -> Litestar:
        @post(["/v1/chat/completions", RUN], sync_to_thread=False)
        def fail() -> None:
            self.calls += 1
            raise self.error

        return Litestar([fail], exception_handlers={Exception: render})


@pytest.fixture
def no_retry() -> Iterator[tuple[Failing, TestClient[Litestar]]]:
    failing = Failing(out_of_tries(5))
    with TestClient(failing.app()) as client:
        yield failing, client


def test_the_openai_sdk_does_not_retry_an_error_that_would_recur(
    no_retry: tuple[Failing, TestClient[Litestar]],
) -> None:
    failing, client = no_retry
    # An httpx client over the app, in-process (the SDK's stub names its own vendored httpx).
    http: Any = client
    sdk = openai.OpenAI(api_key="k", base_url=f"{client.base_url}/v1", http_client=http, max_retries=2)
    with pytest.raises(openai.InternalServerError):
        sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}])
    assert failing.calls == 1


def test_the_cloudflare_sdk_does_not_retry_an_error_that_would_recur(
    no_retry: tuple[Failing, TestClient[Litestar]],
) -> None:
    failing, client = no_retry
    sdk = cloudflare.Cloudflare(
        api_token="k",
        base_url=f"{client.base_url}/client/v4",
        http_client=cast(httpx.Client, client),
        max_retries=2,
    )
    with pytest.raises(cloudflare.InternalServerError):
        sdk.ai.run("@cf/meta/llama-3.1-8b-instruct", account_id="acct", prompt="Hi")
    assert failing.calls == 1


def test_a_passing_failure_is_still_retried() -> None:
    failing = Failing(queue_unavailable())
    with TestClient(failing.app()) as client:
        response = client.post("/v1/chat/completions")
    assert response.status_code == 503
    assert response.headers["x-should-retry"] == "true"
