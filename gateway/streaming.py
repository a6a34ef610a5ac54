"""Streamed responses in either API: commit to a 200 only once the first output (or error) is known."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from gateway.generation import GenerationHandle
from gateway.sse import DONE
from sluice.errors import SluiceError


async def event_stream(
    handle: GenerationHandle, frames: AsyncIterator[bytes], error_frame: Callable[[SluiceError], bytes]
) -> AsyncIterator[bytes]:
    """An SSE body in either API: its frames, an error frame if the generation fails midway, then
    ``[DONE]``. A failure before the first frame is raised instead: the response has not started
    (``gateway/sse.py``), so it is answered with its HTTP status. The handle is closed whatever
    happens, so a client that leaves aborts its job."""
    closing = b""
    began = False
    try:
        async for chunk in frames:
            if handle.done is None:
                began = True
                yield chunk
            else:  # made at once from the last event: they leave together, in one write
                closing += chunk
    except SluiceError as error:
        if not began:
            raise
        closing += error_frame(error)
    finally:
        handle.close()
    yield closing + DONE
