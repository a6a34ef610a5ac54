"""Schemathesis against Sluice's own OpenAPI document: no 500, no response that contradicts it.

Runs against the synthetic engine, so the hundreds of generated requests that pass validation
cost milliseconds each instead of a real model's seconds.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.generation.case import Case
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from gateway.app import create_app
from sluice.config import Settings
from tests.conftest import MODEL, Stack


def deployment_document() -> dict[str, Any]:
    """Sluice's OpenAPI document, narrowed to this test deployment's one served model, so that
    schema-valid requests reach the engine instead of a 400 or 404. (Only narrowings the server
    really enforces: anything else would turn correct acceptances into failures.)"""
    document: dict[str, Any] = create_app(Settings(redis_url="redis://unused")).openapi_schema.to_schema()
    schemas = document["components"]["schemas"]
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        schemas[name]["properties"]["model"] = {"type": "string", "enum": [MODEL]}
    for path, item in document["paths"].items():
        for operation in item.values():
            for parameter in operation.get("parameters", []):
                if parameter["name"] == "model" and "/ai/run/" in path:
                    parameter["schema"] = {"type": "string", "enum": [MODEL]}
    return document


SCHEMA = schemathesis.openapi.from_dict(deployment_document())


@SCHEMA.parametrize()
@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_document(case: Case[Any], synthetic_stack: Stack) -> None:
    # Every other check runs. This one expects every schema-valid body to succeed, but some rules
    # a JSON Schema cannot state are answered with a documented 400: exactly one of prompt or
    # messages, a model this deployment serves, prompt + max_tokens within the context window.
    response = case.call(base_url=synthetic_stack.url)
    # A body over the size limit is refused (as documented) before its content is even read,
    # which the negative-data check does not count among the ways to reject invalid data.
    too_large = response.status_code == 413
    excluded = (
        [positive_data_acceptance, negative_data_rejection] if too_large else [positive_data_acceptance]
    )
    case.validate_response(response, excluded_checks=excluded)  # type: ignore[arg-type]
