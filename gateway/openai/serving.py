"""OpenAI responses: a ``chat.completion`` object, or ``chat.completion.chunk`` SSE frames."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from gateway.errors import openai_body
from gateway.generation import GenerationHandle
from gateway.openai.protocol import ChatCompletion
from gateway.openai.translate import ChunkWriter, to_completion
from gateway.sse import DONE, frame
from sluice.contract import Delta
from sluice.errors import SluiceError


async def chat_json(handle: GenerationHandle, model: str) -> ChatCompletion:
    try:
        completion = await handle.collect()
    finally:
        handle.close()
    return to_completion(handle.id, int(time.time()), model, completion)


async def chat_stream(
    handle: GenerationHandle,
    model: str,
    first: Delta | None,
    rest: AsyncIterator[Delta],
    *,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    chunks = ChunkWriter(handle.id, int(time.time()), model)
    try:
        yield frame(chunks.delta(first.text if first else "", role=True))
        async for delta in rest:
            yield frame(chunks.delta(delta.text))
        assert handle.done is not None
        yield frame(chunks.finish(handle.done.finish_reason))
        if include_usage:
            yield frame(chunks.usage(handle.done.usage))
    except SluiceError as error:
        yield frame(openai_body(error))
    finally:
        handle.close()
    yield DONE
