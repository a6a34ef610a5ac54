"""Request bodies decoded and validated in one step (msgspec), every failure a 5006 naming the field."""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec
from litestar import Request

from sluice.errors import bad_input, too_large

T = TypeVar("T")

_FIELD = re.compile(r"at `\$\.?([^`]*)`")


async def read_body(request: Request[Any, Any, Any], max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise too_large(max_bytes)
    body = await request.body()
    if len(body) > max_bytes:
        raise too_large(max_bytes)
    return body


def decode_json(body: bytes, model: type[T]) -> T:
    if not body.strip():
        raise bad_input("the request body is empty; send a JSON object")
    try:
        return msgspec.json.decode(body, type=model)
    except msgspec.ValidationError as exc:
        match = _FIELD.search(str(exc))
        raise bad_input(str(exc), param=match.group(1) if match else None) from None
    except msgspec.DecodeError as exc:
        raise bad_input(f"malformed JSON: {exc}") from None
