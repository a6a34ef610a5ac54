"""The HTTP server's own floor: the gateway's server streaming the same frames with nothing behind them.

The gateway's CPU per request is measured against this, in the same run: what uvicorn and the
event loop cost to take a request and write a paced stream of frames, before any routing,
validation, Redis or relaying. ``python -m benchmarks.floor PORT`` serves ``POST /`` with a JSON
body ``{"frames": n, "interval_ms": t}``: n frames of a native stream's size, one every t ms.
"""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from sluice.cli import http_server

FRAME = b'data: {"response":" the","p":"abcdefgh"}\n\n'
LAST = FRAME + b"data: [DONE]\n\n"
HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Shape(msgspec.Struct):
    frames: int
    interval_ms: float


async def _lifespan(receive: Receive, send: Send) -> None:
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})


async def app(scope: Message, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = bool(message.get("more_body"))
    shape = msgspec.json.decode(body, type=Shape)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    for _ in range(shape.frames - 1):
        await asyncio.sleep(shape.interval_ms / 1000)
        await send({"type": "http.response.body", "body": FRAME, "more_body": True})
    await asyncio.sleep(shape.interval_ms / 1000)
    await send({"type": "http.response.body", "body": LAST, "more_body": False})


if __name__ == "__main__":
    gc.freeze()  # as the gateway does once it has started
    http_server(app, "127.0.0.1", int(sys.argv[1]), "warning", grace=1).run()
