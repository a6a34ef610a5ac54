"""Helpers for streamed responses: commit to a 200 only once the first token (or error) is known."""

from __future__ import annotations

from collections.abc import AsyncIterator

from gateway.generation import GenerationHandle
from sluice.contract import Delta


async def first_delta(handle: GenerationHandle) -> tuple[Delta | None, AsyncIterator[Delta]]:
    """Wait for the first delta, so a failure before any output answers with a real HTTP error.

    Returns ``None`` for a generation that ended without text (``handle.done`` is then set).
    On error the handle is closed and the :class:`SluiceError` propagates.
    """
    deltas = handle.deltas()
    try:
        first = await anext(deltas, None)
    except BaseException:
        handle.close()
        raise
    return first, deltas
