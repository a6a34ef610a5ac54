"""OpenAI completions responses: a ``text_completion`` object, or the same objects as SSE frames."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from litestar.types import Receive

from gateway.errors import openai_body
from gateway.generation import GenerationHandle, Output
from gateway.openai.completions.protocol import TextCompletion
from gateway.openai.completions.translate import CompletionWriter
from gateway.sse import DONE, frame
from sluice.contract import Delta
from sluice.errors import SluiceError


async def completion_json(handle: GenerationHandle, receive: Receive, model: str) -> TextCompletion:
    try:
        completion = await handle.collect_while_connected(receive)
    finally:
        handle.close()
    writer = CompletionWriter(handle.id, int(time.time()), model)
    return writer.whole(completion.text, completion.finish_reason, completion.usage)


async def completion_stream(
    handle: GenerationHandle,
    model: str,
    first: Output | None,
    rest: AsyncIterator[Output],
    *,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    writer = CompletionWriter(handle.id, int(time.time()), model)
    try:
        if isinstance(first, Delta):
            yield frame(writer.chunk(first.text))
        async for output in rest:
            if isinstance(output, Delta):  # no tools on this API, so text is all there is
                yield frame(writer.chunk(output.text))
        assert handle.done is not None
        yield frame(writer.chunk("", handle.done.finish_reason))
        if include_usage:
            yield frame(writer.usage(handle.done.usage))
    except SluiceError as error:
        yield frame(openai_body(error))
    finally:
        handle.close()
    yield DONE
