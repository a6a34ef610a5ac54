"""The official `cloudflare` SDK (5.x encodes the model's slashes as %2F), pointed at Sluice."""

from __future__ import annotations

import json

import cloudflare
import jsonschema
import pytest

from tests.conftest import MODEL, Stack, seed_schema


@pytest.fixture
def client(stack: Stack) -> cloudflare.Cloudflare:
    return cloudflare.Cloudflare(api_token="unused", base_url=f"{stack.url}/client/v4", max_retries=0)


def json_result_schema() -> dict[str, object]:
    branches = seed_schema("output.schema.json")["oneOf"]
    assert isinstance(branches, list)
    schema: dict[str, object] = next(b for b in branches if b.get("contentType") == "application/json")
    return schema


def test_prompt_form(client: cloudflare.Cloudflare) -> None:
    result = client.ai.run(
        MODEL, account_id="acct", prompt="What is the capital of France?", temperature=0, max_tokens=24
    )
    assert isinstance(result, dict)
    jsonschema.validate(result, json_result_schema())
    assert "Paris" in result["response"]
    usage = result["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_messages_form(client: cloudflare.Cloudflare) -> None:
    result = client.ai.run(
        MODEL,
        account_id="acct",
        messages=[
            {"role": "system", "content": "You answer in one short sentence."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        temperature=0,
        max_tokens=24,
    )
    assert isinstance(result, dict)
    jsonschema.validate(result, json_result_schema())
    assert result["response"]


def test_streaming_response(client: cloudflare.Cloudflare) -> None:
    whole = client.ai.run(MODEL, account_id="acct", prompt="Name three colors.", temperature=0, max_tokens=16)
    assert isinstance(whole, dict)
    with client.ai.with_streaming_response.run(
        MODEL, account_id="acct", prompt="Name three colors.", temperature=0, max_tokens=16, stream=True
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    frames = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert "".join(f["response"] for f in frames) == whole["response"]
    assert frames[-1]["usage"] == whole["usage"]


def test_unknown_model_raises_bad_request_with_code_5007(client: cloudflare.Cloudflare) -> None:
    with pytest.raises(cloudflare.BadRequestError) as raised:
        client.ai.run("@cf/meta/no-such-model", account_id="acct", prompt="hi")
    body = raised.value.body
    assert isinstance(body, dict)
    assert body["success"] is False
    assert body["errors"][0]["code"] == 5007
