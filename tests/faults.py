"""Faults the tests inject with real parts: a connection that fails at the worst moment."""

from __future__ import annotations

import asyncio

from sluice.redis_server import EmbeddedRedis


class LosesOneReply:
    """A TCP proxy to Redis that, once, drops the connection after Redis has run a command holding
    ``marker`` and before its reply reaches the client: a reply lost to a failing connection (a
    Redis stopping, a network partition), after the command took effect."""

    def __init__(self, upstream: EmbeddedRedis, marker: bytes) -> None:
        self._port = int(upstream.url.rsplit(":", 1)[1].split("/")[0])
        self._marker = marker
        self._armed = True
        self.lost = 0
        self.url = ""
        self._connections: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> LosesOneReply:
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
        losing = False

        async def requests() -> None:
            nonlocal losing
            while data := await client.read(65536):
                losing = losing or (self._armed and self._marker in data)
                to_upstream.write(data)

        forwarding = asyncio.create_task(requests())
        try:
            while data := await upstream.read(65536):
                if losing:  # Redis has answered: the command ran, and its answer is lost
                    self._armed, self.lost = False, self.lost + 1
                    break
                to_client.write(data)
        finally:
            forwarding.cancel()
            to_client.close()
            to_upstream.close()


class GoesSilent:
    """A TCP proxy to Redis whose connections open before :meth:`silence` stop answering, still
    open: a half-open connection (a network partition, a host gone without closing its sockets).
    Connections opened after it work."""

    def __init__(self, upstream: EmbeddedRedis) -> None:
        self._port = int(upstream.url.rsplit(":", 1)[1].split("/")[0])
        self._silenced: set[asyncio.StreamWriter] = set()
        self._open: set[asyncio.StreamWriter] = set()
        self._connections: set[asyncio.Task[None]] = set()
        self.url = ""

    def silence(self) -> None:
        self._silenced |= self._open

    async def __aenter__(self) -> GoesSilent:
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
        self._open.add(to_client)
        upstream, to_upstream = await asyncio.open_connection("127.0.0.1", self._port)

        async def requests() -> None:
            while data := await client.read(65536):
                to_upstream.write(data)

        forwarding = asyncio.create_task(requests())
        try:
            while data := await upstream.read(65536):
                if to_client not in self._silenced:
                    to_client.write(data)
        finally:
            forwarding.cancel()
            to_client.close()
            to_upstream.close()
