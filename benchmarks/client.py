"""A lean streaming client: raw HTTP/1.1 over asyncio, so the load generator costs little CPU.

It times what a user sees: the first SSE frame (time to first token), the gaps between frames,
and the end of the stream. An httpx client parsing every frame would itself become the
bottleneck on a 2-core machine long before the gateway does. Connections are kept alive and
reused, as the OpenAI and Cloudflare SDKs' pools do, unless no pool is given.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

_TOKENS = re.compile(rb'"completion_tokens":(\d+)')
_LENGTH = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")
#: The last chunk of a chunked body, after the previous chunk's CRLF.
_END_OF_CHUNKS = b"\r\n0\r\n\r\n"

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass
class Result:
    ttft: float = float("nan")
    e2e: float = float("nan")
    tokens: int = 0
    gaps: list[float] = field(default_factory=list)
    status: int = 0


class Pool:
    """Idle keep-alive connections to one server."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self._idle: list[Connection] = []

    async def take(self) -> Connection:
        """An idle connection the server has not closed meanwhile, else a new one."""
        while self._idle:
            reader, writer = self._idle.pop()
            if not reader.at_eof() and not writer.is_closing():
                return reader, writer
            writer.close()
        return await asyncio.open_connection(self.host, self.port)

    def give_back(self, connection: Connection) -> None:
        self._idle.append(connection)

    def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


async def stream(
    url: str,
    path: str,
    body: dict[str, object],
    limit: float = 120,
    *,
    leave_early: bool = False,
    pool: Pool | None = None,
    headers: Mapping[str, str] | None = None,
) -> Result:
    """POST one request and time its frames; ``leave_early``: hang up after the first."""
    parts = urlsplit(url)
    payload = json.dumps(body).encode()
    keep = "keep-alive" if pool is not None and not leave_early else "close"
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(payload)}\r\nconnection: {keep}\r\n{extra}\r\n"
    ).encode() + payload
    result = Result()
    start = time.perf_counter()
    if pool is not None:
        reader, writer = await pool.take()
    else:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    reusable = False
    try:
        writer.write(request)
        async with asyncio.timeout(limit):
            head = await reader.readuntil(b"\r\n\r\n")
            result.status = int(head.split(b" ", 2)[1])
            tail, last = b"", None
            length = _LENGTH.search(head)
            remaining = int(length.group(1)) if length else -1
            while remaining != 0 and (chunk := await reader.read(65536 if remaining < 0 else remaining)):
                now = time.perf_counter()
                if b"data: " in chunk:
                    if last is None:
                        result.ttft = now - start
                        if leave_early:
                            break
                    else:
                        result.gaps.append(now - last)
                    last = now
                tail = (tail + chunk)[-512:]
                if remaining > 0:
                    remaining -= len(chunk)
                elif tail.endswith(_END_OF_CHUNKS):
                    reusable = True
                    break
            reusable = reusable or remaining == 0
            result.e2e = time.perf_counter() - start
            if match := _TOKENS.search(tail):
                result.tokens = int(match.group(1))
    finally:
        if pool is not None and reusable and keep == "keep-alive":
            pool.give_back((reader, writer))
        else:
            writer.close()
    return result
