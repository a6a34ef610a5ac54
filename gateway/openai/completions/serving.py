"""OpenAI completions responses: a ``text_completion`` object, or the same objects as SSE frames."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from litestar.types import Receive

from gateway.errors import openai_error_frame
from gateway.generation import GenerationHandle
from gateway.openai.completions.protocol import TextCompletion
from gateway.openai.completions.translate import CompletionWriter
from gateway.sse import frame
from gateway.streaming import event_stream
from sluice.contract import Delta


async def completion_json(handle: GenerationHandle, receive: Receive, model: str) -> TextCompletion:
    completion = await handle.answer(receive)
    writer = CompletionWriter(handle.id, int(time.time()), model)
    return writer.whole(completion.text, completion.finish_reason, completion.usage)


def completion_stream(handle: GenerationHandle, model: str, *, include_usage: bool) -> AsyncIterator[bytes]:
    frames = _completion_frames(handle, model, include_usage=include_usage)
    return event_stream(handle, frames, openai_error_frame)


async def _completion_frames(
    handle: GenerationHandle, model: str, *, include_usage: bool
) -> AsyncIterator[bytes]:
    writer = CompletionWriter(handle.id, int(time.time()), model)
    async for output in handle.outputs():
        if isinstance(output, Delta):  # no tools on this API, so text is all there is
            yield frame(writer.chunk(output.text))
    assert handle.done is not None
    yield frame(writer.chunk("", handle.done.finish_reason))
    if include_usage:
        yield frame(writer.usage(handle.done.usage))
