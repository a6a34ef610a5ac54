"""Limits on what a request may carry beyond its body (whose size Litestar bounds): headers.

The HTTP parser (httptools) sets no limit of its own on header size; Cloudflare's edge refuses
requests whose headers pass 32 KiB, and so does this gateway, with 431 in the route's envelope.
"""

from __future__ import annotations

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

from sluice.errors import headers_too_large

MAX_HEADER_BYTES = 32 * 1024


def header_limit(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP:
            size = sum(len(name) + len(value) + 4 for name, value in scope["headers"])
            if size > MAX_HEADER_BYTES:
                raise headers_too_large(MAX_HEADER_BYTES)
        await app(scope, receive, send)

    return middleware
