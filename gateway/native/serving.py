"""Workers AI responses: the v4 JSON envelope, or SSE ``{"response": …}`` frames ending in usage."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

from gateway.errors import CloudflareError, cloudflare_body
from gateway.generation import GenerationHandle
from gateway.native.protocol import RunEnvelope, RunResult, StreamFrame
from gateway.sse import DONE, frame
from sluice.contract import Delta
from sluice.errors import SluiceError

_PADDING = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def padding() -> str:
    return _PADDING[: random.randint(1, len(_PADDING))]


async def run_json(handle: GenerationHandle) -> RunEnvelope:
    try:
        completion = await handle.collect()
    finally:
        handle.close()
    return RunEnvelope(result=RunResult(response=completion.text, usage=completion.usage))


class ErrorFrame(StreamFrame, omit_defaults=True):
    errors: list[CloudflareError] | None = None


async def run_stream(
    handle: GenerationHandle, first: Delta | None, rest: AsyncIterator[Delta]
) -> AsyncIterator[bytes]:
    try:
        if first is not None:
            yield frame(StreamFrame(response=first.text, p=padding()))
            async for delta in rest:
                yield frame(StreamFrame(response=delta.text, p=padding()))
        assert handle.done is not None
        yield frame(StreamFrame(response="", usage=handle.done.usage))
    except SluiceError as error:
        yield frame(ErrorFrame(response="", errors=cloudflare_body(error).errors))
    finally:
        handle.close()
    yield DONE
