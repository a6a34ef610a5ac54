"""A lean streaming client: raw HTTP/1.1 over asyncio, so the load generator costs little CPU.

It times what a user sees: the first SSE frame (time to first token), the gaps between frames,
and the end of the stream. An httpx client parsing every frame would itself become the
bottleneck on a 2-core machine long before the gateway does.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

_TOKENS = re.compile(rb'"completion_tokens":(\d+)')


@dataclass
class Result:
    ttft: float = float("nan")
    e2e: float = float("nan")
    tokens: int = 0
    gaps: list[float] = field(default_factory=list)
    status: int = 0


async def stream(
    url: str, path: str, body: dict[str, object], limit: float = 120, *, leave_early: bool = False
) -> Result:
    """POST one streaming request and time its frames; ``leave_early``: hang up after the first."""
    parts = urlsplit(url)
    payload = json.dumps(body).encode()
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n"
    ).encode() + payload
    result = Result()
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(request)
        async with asyncio.timeout(limit):
            head = await reader.readuntil(b"\r\n\r\n")
            result.status = int(head.split(b" ", 2)[1])
            tail, last = b"", None
            while chunk := await reader.read(65536):
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
            result.e2e = time.perf_counter() - start
            if match := _TOKENS.search(tail):
                result.tokens = int(match.group(1))
    finally:
        writer.close()
    return result
