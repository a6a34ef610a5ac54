"""Helpers for streamed responses: commit to a 200 only once the first output (or error) is known."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from gateway.generation import GenerationHandle, Output
from gateway.sse import DONE
from sluice.errors import SluiceError


async def first_output(handle: GenerationHandle) -> tuple[Output | None, AsyncIterator[Output]]:
    """Wait for the first output, so a failure before any answers with a real HTTP error.

    Returns ``None`` for a generation that ended without output (``handle.done`` is then set).
    On error the handle is closed and the :class:`SluiceError` propagates.
    """
    outputs = handle.outputs()
    try:
        first = await anext(outputs, None)
    except BaseException:
        handle.close()
        raise
    return first, outputs


async def event_stream(
    handle: GenerationHandle, frames: AsyncIterator[bytes], error_frame: Callable[[SluiceError], bytes]
) -> AsyncIterator[bytes]:
    """An SSE body in either API: its frames, an error frame if the generation fails midway, then
    ``[DONE]``. The handle is closed whatever happens, so a client that leaves aborts its job."""
    closing = b""
    try:
        async for chunk in frames:
            if handle.done is None:
                yield chunk
            else:  # made at once from the last event: they leave together, in one write
                closing += chunk
    except SluiceError as error:
        closing += error_frame(error)
    finally:
        handle.close()
    yield closing + DONE
