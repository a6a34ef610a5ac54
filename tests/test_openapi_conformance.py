"""Schemathesis against Sluice's own OpenAPI document: no 500, no response that contradicts it.

Runs against the synthetic engine, so the hundreds of generated requests that pass validation
cost milliseconds each instead of a real model's seconds.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.generation.case import Case
from schemathesis.specs.openapi.checks import positive_data_acceptance

from gateway.app import create_app
from sluice.config import Settings
from tests.conftest import Stack

SCHEMA = schemathesis.openapi.from_dict(
    create_app(Settings(redis_url="redis://unused")).openapi_schema.to_schema()
)


@SCHEMA.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_document(case: Case[Any], synthetic_stack: Stack) -> None:
    body = case.body if isinstance(case.body, dict) else {}
    if body.get("stream") is True:
        # A stream is the documented 200's other media type (SSE); errors are still JSON.
        response = case.call(base_url=synthetic_stack.url)
        assert response.status_code < 500, response.text
        if response.status_code == 200:
            assert response.headers["content-type"][0].startswith("text/event-stream")
            assert response.text.endswith("data: [DONE]\n\n")
        return
    # Every other check runs. This one expects every schema-valid body to succeed, but some rules
    # a JSON Schema cannot state are answered with a documented 400: exactly one of prompt or
    # messages, a model this deployment serves, prompt + max_tokens within the context window.
    case.call_and_validate(base_url=synthetic_stack.url, excluded_checks=[positive_data_acceptance])
