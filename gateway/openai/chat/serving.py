"""OpenAI chat responses: a ``chat.completion`` object, or ``chat.completion.chunk`` SSE frames."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from litestar.types import Receive

from gateway.errors import openai_body
from gateway.generation import GenerationHandle, Output
from gateway.openai.chat.protocol import ChatCompletion
from gateway.openai.chat.translate import ChunkWriter, to_completion
from gateway.sse import DONE, frame
from sluice.contract import Delta
from sluice.errors import SluiceError


async def chat_json(handle: GenerationHandle, receive: Receive, model: str) -> ChatCompletion:
    try:
        completion = await handle.collect_while_connected(receive)
    finally:
        handle.close()
    return to_completion(handle.id, int(time.time()), model, completion)


def output_chunk(chunks: ChunkWriter, output: Output | None, *, first: bool) -> bytes:
    if output is None or isinstance(output, Delta):
        return frame(chunks.delta(output.text if output else "", role=first))
    return frame(chunks.tool_calls(output.calls, role=first))


async def chat_stream(
    handle: GenerationHandle,
    model: str,
    first: Output | None,
    rest: AsyncIterator[Output],
    *,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    chunks = ChunkWriter(handle.id, int(time.time()), model)
    try:
        yield output_chunk(chunks, first, first=True)
        async for output in rest:
            yield output_chunk(chunks, output, first=False)
        assert handle.done is not None
        yield frame(chunks.finish(handle.done.finish_reason))
        if include_usage:
            yield frame(chunks.usage(handle.done.usage))
    except SluiceError as error:
        yield frame(openai_body(error))
    finally:
        handle.close()
    yield DONE
