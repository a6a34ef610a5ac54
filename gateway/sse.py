"""Server-sent events shared by both APIs: the framing and the streamed response."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

import msgspec
from litestar.response import Stream
from litestar.response.base import ASGIResponse
from litestar.response.streaming import ASGIStreamingResponse

if TYPE_CHECKING:
    from litestar import Litestar, Request
    from litestar.background_tasks import BackgroundTask, BackgroundTasks
    from litestar.datastructures import Cookie
    from litestar.types import HTTPResponseBodyEvent, Receive, Scope, Send, TypeEncodersMap

_encoder = msgspec.json.Encoder()

DONE = b"data: [DONE]\n\n"
HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def frame(payload: object) -> bytes:
    return b"data: " + _encoder.encode(payload) + b"\n\n"


class EventStream(Stream):
    """A ``text/event-stream`` response of ready-made frames.

    Litestar's ``Stream`` runs each response in an anyio task group (a task for the body, a
    cancel scope for the client leaving); that machinery was a fifth of the gateway's CPU per
    streamed request. This one streams in the request's own task and watches for the client
    leaving in a plain asyncio task, with the same outcome: a client that leaves cancels the body
    (whose ``finally`` aborts its job), and the response ends quietly.

    Nothing is sent before the body's first frame, so a handler returns this as soon as its job
    is queued: a body whose generation fails before any output raises its error instead, and the
    exception handlers answer it with a real HTTP status (``gateway/streaming.py``).
    """

    def __init__(self, frames: AsyncIterator[bytes], headers: dict[str, str] | None = None) -> None:
        super().__init__(frames, media_type="text/event-stream", headers={**HEADERS, **(headers or {})})

    def to_asgi_response(  # the keywords Litestar's response handler passes
        self,
        app: Litestar | None,
        request: Request[Any, Any, Any],
        *,
        background: BackgroundTask | BackgroundTasks | None = None,
        cookies: Iterable[Cookie] | None = None,
        encoded_headers: Iterable[tuple[bytes, bytes]] | None = None,
        headers: dict[str, str] | None = None,
        is_head_response: bool = False,
        media_type: str | None = None,
        status_code: int | None = None,
        type_encoders: TypeEncodersMap | None = None,
    ) -> ASGIResponse:
        return _EventStreamBody(
            iterator=self.iterator,  # type: ignore[arg-type]  # always an async iterator here
            background=self.background or background,
            content_length=0,
            cookies=itertools.chain(self.cookies, cookies or ()),
            encoded_headers=encoded_headers,
            headers={**(headers or {}), **self.headers},
            is_head_response=is_head_response,
            media_type=self.media_type,
            status_code=self.status_code or status_code,
        )


class _EventStreamBody(ASGIStreamingResponse):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The response starts with its first frame. Until that is known, a failure is raised to
        the exception handlers, a real HTTP error in the route's envelope; and the response was
        made while the job waited, not after its first token."""
        streaming = asyncio.current_task()
        assert streaming is not None
        left = False

        async def watch() -> None:
            nonlocal left
            while (await receive())["type"] != "http.disconnect":
                pass
            left = True
            streaming.cancel()

        watcher = asyncio.create_task(watch())
        try:
            chunks = aiter(self.iterator)
            first = await anext(chunks, None)
            await self.start_response(send)
            await self._send_frames(send, first, chunks)
        except asyncio.CancelledError:
            if not left:
                raise  # the server's own cancellation (shutdown), not the client leaving
            streaming.uncancel()  # whether queued or streaming: the body's end aborted its job
        finally:
            watcher.cancel()
        await self.after_response()

    async def _send_frames(
        self, send: Send, chunk: str | bytes | None, rest: AsyncIterator[str | bytes]
    ) -> None:
        """Each chunk as it comes; the one that ends with ``[DONE]`` also ends the body, in the
        same write."""
        while chunk is not None:
            body = chunk if isinstance(chunk, bytes) else chunk.encode()
            last = body.endswith(DONE)
            event: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": not last}
            await send(event)
            if last:
                return
            chunk = await anext(rest, None)
        end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": b"", "more_body": False}
        await send(end)
