"""Authentication: ``Authorization: Bearer <key>`` to a :class:`Caller`, on every API route.

A middleware of the API routes, inside Litestar's exception handling, so a refusal is an error
like any other, rendered in the route's envelope: 401 (code 10000) for a missing or unknown key,
403 when a native path names another account. (Not a guard: Litestar copies the route handler for
every guard call, which was 5 % of the gateway's CPU per request.) Keys are looked up by hash in
Redis (or the keys file) and cached briefly: a revoked key stops working within
:data:`CACHE_SECONDS`.
"""

from __future__ import annotations

import asyncio
import time

from litestar.types import ASGIApp, Receive, Scope, Send
from redis.exceptions import RedisError

from gateway.caller import CALLER_STATE, Caller
from sluice.errors import queue_unavailable, unauthenticated, wrong_account
from sluice.keys import KeyRecord, KeyStore, hash_key

CACHE_SECONDS = 10.0
_CACHE_LIMIT = 10_000


class Authenticator:
    def __init__(self, store: KeyStore, *, open_access: bool) -> None:
        self._store = store
        self.open_access = open_access
        self._cache: dict[str, tuple[KeyRecord | None, float]] = {}

    async def caller(self, authorization: str | None) -> Caller:
        if self.open_access:
            return Caller(key=None)
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthenticated()
        record = await self._find(token.strip())
        if record is None:
            raise unauthenticated()
        return Caller(key=record)

    async def _find(self, token: str) -> KeyRecord | None:
        digest = hash_key(token)
        cached = self._cache.get(digest)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        try:
            async with asyncio.timeout(3.0):
                record = await self._store.find(digest)
        except (RedisError, OSError, TimeoutError) as exc:
            raise queue_unavailable() from exc
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()  # unknown keys by the thousand: an attack; forget, do not grow
        self._cache[digest] = (record, now + CACHE_SECONDS)
        return record


def authenticate(app: ASGIApp) -> ASGIApp:
    """Middleware of every API route: the caller, and their right to the account in the path."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        authenticator: Authenticator = scope["litestar_app"].state.authenticator
        authorization = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None
        )
        caller = await authenticator.caller(authorization)
        account = scope["path_params"].get("account_id")
        if account is not None and caller.key is not None and account != caller.key.account:
            raise wrong_account(account)
        caller.path_account = account
        scope.setdefault("state", {})[CALLER_STATE] = caller
        await app(scope, receive, send)

    return middleware
