"""OpenAI chat responses: a ``chat.completion`` object, or ``chat.completion.chunk`` SSE frames."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from litestar.types import Receive

from gateway.errors import openai_error_frame
from gateway.generation import GenerationHandle, Output
from gateway.openai.chat.protocol import ChatCompletion
from gateway.openai.chat.translate import ChunkWriter, to_completion
from gateway.sse import frame
from gateway.streaming import event_stream
from sluice.contract import Delta


async def chat_json(
    handle: GenerationHandle, receive: Receive, model: str, *, parallel: bool
) -> ChatCompletion:
    completion = await handle.answer(receive)
    return to_completion(handle.id, int(time.time()), model, completion, parallel=parallel)


def output_chunk(chunks: ChunkWriter, output: Output | None, *, first: bool) -> bytes:
    if output is None or isinstance(output, Delta):
        return frame(chunks.delta(output.text if output else "", role=first))
    return frame(chunks.tool_calls(output.calls, role=first))


def chat_stream(
    handle: GenerationHandle, model: str, *, include_usage: bool, parallel: bool
) -> AsyncIterator[bytes]:
    frames = _chat_frames(handle, model, include_usage=include_usage, parallel=parallel)
    return event_stream(handle, frames, openai_error_frame)


async def _chat_frames(
    handle: GenerationHandle, model: str, *, include_usage: bool, parallel: bool
) -> AsyncIterator[bytes]:
    chunks = ChunkWriter(handle.id, int(time.time()), model, parallel=parallel)
    first = True
    async for output in handle.outputs():
        yield output_chunk(chunks, output, first=first)
        first = False
    if first:  # no output at all: the role still comes first
        yield output_chunk(chunks, None, first=True)
    assert handle.done is not None
    yield frame(chunks.finish(handle.done.finish_reason))
    if include_usage:
        yield frame(chunks.usage(handle.done.usage))
