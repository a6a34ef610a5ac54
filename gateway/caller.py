"""Who is calling (an API key, or nobody on an open deployment) and what their request left them.

Set on the request by authentication (``gateway/auth.py``); its quota, filled in at admission
(``gateway/ratelimit.py``), goes out as OpenAI's ``x-ratelimit-*`` headers on every response,
refusals included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar import Request
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from gateway.ratelimit import Quota
from sluice.keys import KeyRecord

CALLER_STATE = "sluice_caller"


@dataclass
class Caller:
    key: KeyRecord | None
    quota: Quota | None = None
    #: The account a native path names: whose adapters an open deployment's request may use.
    path_account: str | None = None

    @property
    def account(self) -> str | None:
        """The key's account; on an open deployment (no key), the path's, if it names one."""
        return self.key.account if self.key is not None else self.path_account


def caller_of(request: Request[Any, Any, Any]) -> Caller:
    """The caller authentication found. The generation routes call this rather than take it as
    a dependency: Litestar resolves a handler's several dependencies concurrently, in an anyio
    task group per request, which cost about 80 µs of CPU per request, as much as the rest
    of Litestar's routing and decoding together."""
    caller = request.scope.get("state", {}).get(CALLER_STATE)
    return caller if isinstance(caller, Caller) else Caller(key=None)


def quota_headers(app: ASGIApp) -> ASGIApp:
    """ASGI middleware: the caller's quota on the response, whatever the response is."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return

        async def with_quota(message: Message) -> None:
            caller = scope.get("state", {}).get(CALLER_STATE)
            if message["type"] == "http.response.start" and isinstance(caller, Caller) and caller.quota:
                extra = [(k.encode(), v.encode()) for k, v in caller.quota.headers().items()]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await app(scope, receive, with_quota)

    return middleware
