"""Errors rendered at the edge, in the envelope of the API the client spoke.

Routes under ``/v1/`` and ``…/ai/v1/`` answer OpenAI's ``{"error": {...}}`` so the OpenAI SDK raises
its typed exceptions; every other route answers Cloudflare's v4 envelope. Anything that is not a
:class:`SluiceError` is turned into one here, so no client ever sees a bare 500 page.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import msgspec
from litestar import MediaType, Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    ValidationException,
)
from litestar.openapi.datastructures import ResponseSpec

from gateway.sse import frame
from sluice.errors import (
    ErrorCode,
    SluiceError,
    bad_input,
    internal,
    method_not_allowed,
    no_route,
    too_large,
)

log = logging.getLogger("sluice.gateway")


class CloudflareError(msgspec.Struct):
    code: int
    message: str


class CloudflareEnvelope(msgspec.Struct):
    result: None
    success: bool
    errors: list[CloudflareError]
    messages: list[str]


class OpenAIErrorBody(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(msgspec.Struct):
    error: OpenAIErrorBody


#: OpenAI's ``error.type`` by HTTP status, as OpenAI's SDK maps statuses to exception classes.
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_denied_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}

_OPENAI_CODES = {
    ErrorCode.NO_SUCH_MODEL: "model_not_found",
    ErrorCode.CONTEXT_WINDOW: "context_length_exceeded",
    ErrorCode.RATE_LIMITED: "rate_limit_exceeded",
    ErrorCode.CAPACITY: "capacity_exceeded",
    ErrorCode.AUTHENTICATION: "invalid_api_key",
    ErrorCode.TIMEOUT: "timeout",
}


def speaks_openai(path: str) -> bool:
    return path.startswith("/v1/") or "/ai/v1/" in path


def cloudflare_message(error: SluiceError) -> str:
    # Workers AI prefixes the messages of its own (3xxx/5xxx) codes; routing errors carry none.
    return f"AiError: {error.message}" if 3000 <= error.code < 6000 else error.message


def cloudflare_body(error: SluiceError) -> CloudflareEnvelope:
    return CloudflareEnvelope(
        result=None,
        success=False,
        errors=[CloudflareError(code=int(error.code), message=cloudflare_message(error))],
        messages=[],
    )


def openai_status(error: SluiceError) -> int:
    # OpenAI answers 404 for an unknown model (Cloudflare's table says 400), and 400 for a
    # request over the context window (Cloudflare: 413).
    if error.code is ErrorCode.NO_SUCH_MODEL:
        return 404
    if error.code is ErrorCode.CONTEXT_WINDOW:
        return 400
    return error.status


def openai_body(error: SluiceError) -> OpenAIError:
    status = openai_status(error)
    kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return OpenAIError(OpenAIErrorBody(error.message, kind, error.param, _OPENAI_CODES.get(error.code)))


def invalid_body(exc: ValidationException) -> SluiceError:
    """Litestar's body validation (msgspec, with the schema's bounds) as one 5006 naming the field."""
    problems = exc.extra if isinstance(exc.extra, list) else []
    for problem in problems:
        if not isinstance(problem, dict):
            continue
        key, message = str(problem.get("key", "")), str(problem.get("message", ""))
        if key == "data" and message == "'data'":
            return bad_input("the request body is empty; send a JSON object")
        if key == "data":  # a failure of the whole body: shape, unknown field, cross-field rule
            return bad_input(message)
        return bad_input(f"{key}: {message}", param=key)
    return bad_input(exc.detail)


def openai_error_frame(error: SluiceError) -> bytes:
    """An error that ends an OpenAI stream midway: OpenAI's error object as one more event."""
    return frame(openai_body(error))


def as_sluice_error(exc: Exception, content_type: str = "") -> SluiceError:
    """Litestar's own exceptions (routing, body size) and anything unexpected, as Sluice errors."""
    if isinstance(exc, SluiceError):
        return exc
    if isinstance(exc, NotFoundException):
        return no_route()
    if isinstance(exc, ValidationException):
        return invalid_body(exc)
    if isinstance(exc, HTTPException) and exc.status_code == 413:
        return too_large()
    if isinstance(exc, HTTPException) and exc.status_code < 500:
        # The body did not parse. Any content type carrying JSON is read (curl -d sends
        # form-urlencoded, and the Workers AI docs' examples rely on it); a form upload is named.
        media_type = content_type.split(";")[0].strip().lower()
        if media_type.startswith("multipart/"):
            return bad_input(f"send the body as JSON (content-type: application/json), not {media_type}")
        return bad_input(f"malformed JSON body: {exc.detail}")
    log.exception("unhandled error", exc_info=exc)
    return internal(type(exc).__name__)


def _specs(container: type, statuses: dict[int, str]) -> dict[int, ResponseSpec]:
    return {
        status: ResponseSpec(data_container=container, description=text, generate_examples=False)
        for status, text in statuses.items()
    }


_STATUSES = {
    400: "Bad input (5006), unknown model (5007)",
    404: "No such route or model",
    408: "Request timeout (3007)",
    413: "Request too large (3006) or over the context window (5021)",
    429: "Rate limited (3021) or capacity exceeded (3040)",
    500: "Internal error (3001)",
    503: "Temporarily unavailable (3040)",
}
#: The error responses of every route, for the OpenAPI document.
CLOUDFLARE_ERRORS = _specs(CloudflareEnvelope, _STATUSES)
OPENAI_ERRORS = _specs(OpenAIError, _STATUSES)


def render(request: Request[Any, Any, Any], exc: Exception) -> Response[object]:
    if isinstance(exc, MethodNotAllowedException):
        error = method_not_allowed(request.method)
    else:
        error = as_sluice_error(exc, request.headers.get("content-type", ""))
    # Both SDKs retry a 408, 429 or 5xx unless told not to: an error that would recur says so.
    headers = {"x-should-retry": "true" if error.retryable else "false"}
    if error.retry_after is not None:
        # Both forms the OpenAI and Cloudflare SDKs read; seconds rounded up, never to zero.
        headers["retry-after"] = str(max(1, math.ceil(error.retry_after)))
        headers["retry-after-ms"] = str(max(1, round(error.retry_after * 1000)))
    if isinstance(exc, HTTPException) and exc.headers:
        headers.update(exc.headers)  # e.g. the ``Allow`` list a 405 must carry
    if speaks_openai(request.url.path):
        return Response(
            openai_body(error), status_code=openai_status(error), media_type=MediaType.JSON, headers=headers
        )
    return Response(
        cloudflare_body(error), status_code=error.status, media_type=MediaType.JSON, headers=headers
    )
