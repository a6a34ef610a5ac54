"""Request bodies validated strictly, and documented as what they are.

Litestar parses the JSON and documents the body's type in the OpenAPI schema; its own conversion
is lenient (``"5"`` would become 5, ``0`` would become ``False``), so handlers take the parsed
body unconverted (``SkipValidation``) and :func:`strict` converts it the way Workers AI validates:
types exact, bounds from the schema, and every failure a 5006 that names the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, OpenAPIType, Operation, Schema

from sluice.errors import bad_input

T = TypeVar("T")

_FIELD = re.compile(r" - at `\$\.?([^`]*)`$")


def strict(data: Any, model: type[T]) -> T:
    try:
        return msgspec.convert(data, model, strict=True)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _FIELD.search(message)
        if match is None or not match.group(1):
            raise bad_input(_FIELD.sub("", message)) from None
        field = match.group(1)
        raise bad_input(f"{field}: {message[: match.start()]}", param=field) from None


@dataclass
class StreamingOperation(Operation):
    """An operation whose 200 is JSON or, with ``stream: true``, Server-Sent Events."""

    def __post_init__(self) -> None:
        ok = (self.responses or {}).get("200")
        if isinstance(ok, OpenAPIResponse) and ok.content is not None:
            ok.content["text/event-stream"] = OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING))
