"""Helpers for streamed responses: commit to a 200 only once the first output (or error) is known."""

from __future__ import annotations

from collections.abc import AsyncIterator

from gateway.generation import GenerationHandle, Output


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
