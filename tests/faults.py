"""Faults the tests inject with real parts: a connection that fails at the worst moment."""

from __future__ import annotations

import asyncio
from typing import Literal, Self

from sluice.redis_server import EmbeddedRedis


class _Proxy:
    """A TCP proxy to Redis; a subclass decides, chunk by chunk, what happens to Redis's replies
    on each client connection (a connection is named by its writer to the client)."""

    def __init__(self, upstream: EmbeddedRedis) -> None:
        self._port = int(upstream.url.rsplit(":", 1)[1].split("/")[0])
        self._connections: set[asyncio.Task[None]] = set()
        self.url = ""

    def sent(self, client: asyncio.StreamWriter, data: bytes) -> None:
        """``data`` is on its way from ``client`` to Redis."""

    def reply(self, client: asyncio.StreamWriter, data: bytes) -> Literal["pass", "drop", "cut"]:
        """What becomes of Redis's ``data`` for ``client``: passed on, dropped, or the connection
        cut before it."""
        return "pass"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for connection in self._connections:
            connection.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _serve(self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        upstream, to_upstream = await asyncio.open_connection("127.0.0.1", self._port)

        async def requests() -> None:
            while data := await client.read(65536):
                self.sent(to_client, data)
                to_upstream.write(data)

        forwarding = asyncio.create_task(requests())
        try:
            while data := await upstream.read(65536):
                fate = self.reply(to_client, data)
                if fate == "cut":
                    break
                if fate == "pass":
                    to_client.write(data)
        finally:
            forwarding.cancel()
            to_client.close()
            to_upstream.close()


class LosesOneReply(_Proxy):
    """Once, drops the connection after Redis has run a command holding ``marker`` and before its
    reply reaches the client: a reply lost to a failing connection (a Redis stopping, a network
    partition), after the command took effect."""

    def __init__(self, upstream: EmbeddedRedis, marker: bytes) -> None:
        super().__init__(upstream)
        self._marker = marker
        self._armed = True
        self._losing: set[asyncio.StreamWriter] = set()
        self.lost = 0

    def sent(self, client: asyncio.StreamWriter, data: bytes) -> None:
        if self._armed and self._marker in data:
            self._losing.add(client)

    def reply(self, client: asyncio.StreamWriter, data: bytes) -> Literal["pass", "drop", "cut"]:
        if client not in self._losing:
            return "pass"
        self._losing.discard(client)  # Redis has answered: the command ran, and its answer is lost
        self._armed, self.lost = False, self.lost + 1
        return "cut"


class GoesSilent(_Proxy):
    """Connections open before :meth:`silence` stop answering, still open: a half-open connection
    (a network partition, a host gone without closing its sockets). Later ones work."""

    def __init__(self, upstream: EmbeddedRedis) -> None:
        super().__init__(upstream)
        self._seen: set[asyncio.StreamWriter] = set()
        self._silenced: set[asyncio.StreamWriter] = set()

    def silence(self) -> None:
        self._silenced |= self._seen

    def sent(self, client: asyncio.StreamWriter, data: bytes) -> None:
        self._seen.add(client)

    def reply(self, client: asyncio.StreamWriter, data: bytes) -> Literal["pass", "drop", "cut"]:
        return "drop" if client in self._silenced else "pass"
