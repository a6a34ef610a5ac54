"""Request bodies decoded strictly, in one step, with msgspec, and documented in the OpenAPI schema.

Litestar's own ``data`` parameter converts leniently (``"5"`` becomes 5, ``0`` becomes ``False``);
Workers AI validates types strictly, so a body is decoded here instead, as a dependency, and a
wrong type is a 5006 that names the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from litestar import Request
from litestar.di import Provide
from litestar.openapi.spec import Components, OpenAPIMediaType, Operation, Reference, RequestBody

from sluice.errors import bad_input

T = TypeVar("T")

_FIELD = re.compile(r" - at `\$\.?([^`]*)`$")


def decode_json(body: bytes, model: type[T]) -> T:
    if not body.strip():
        raise bad_input("the request body is empty; send a JSON object")
    try:
        return msgspec.json.decode(body, type=model)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _FIELD.search(message)
        if match is None or not match.group(1):
            raise bad_input(_FIELD.sub("", message)) from None
        field = match.group(1)
        raise bad_input(f"{field}: {message[: match.start()]}", param=field) from None
    except msgspec.DecodeError as exc:
        raise bad_input(f"malformed JSON body: {exc}") from None


def json_body(model: type[T]) -> Provide:
    """A dependency that yields the request body decoded as ``model``."""

    async def decode(request: Request[Any, Any, Any]) -> T:
        # Any content type whose body is JSON is taken (curl -d sends form-urlencoded, and the
        # Workers AI docs' examples rely on that); a form upload is a clear mistake worth naming.
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type.startswith("multipart/"):
            raise bad_input(f"send the body as JSON (content-type: application/json), not {media_type}")
        return decode_json(await request.body(), model)

    decode.__annotations__["return"] = model
    return Provide(decode)


def documented_body(model: type) -> type[Operation]:
    """An OpenAPI operation whose request body is ``model`` (see :func:`body_components`)."""
    reference = Reference(ref=f"#/components/schemas/{model.__name__}")

    @dataclass
    class WithBody(Operation):
        def __post_init__(self) -> None:
            media = OpenAPIMediaType(schema=reference)
            self.request_body = RequestBody(content={"application/json": media}, required=True)

    return WithBody


def body_components(*models: type) -> Components:
    """The JSON Schemas of request bodies, as msgspec derives them (bounds included)."""
    _, schemas = msgspec.json.schema_components(models, ref_template="#/components/schemas/{name}")
    return Components(schemas=schemas)
