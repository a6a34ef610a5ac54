"""Workers AI responses: the v4 JSON envelope, or SSE ``{"response": …}`` frames ending in usage."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator

from litestar.types import Receive

from gateway.errors import CloudflareError, cloudflare_body
from gateway.generation import Completion, GenerationHandle, Output
from gateway.native.protocol import LegacyToolCall, RunEnvelope, RunRequest, RunResult, StreamFrame
from gateway.sse import frame
from gateway.streaming import event_stream
from sluice.contract import Delta, JsonObject
from sluice.errors import SluiceError, bad_input

_PADDING = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def padding() -> str:
    return _PADDING[: random.randint(1, len(_PADDING))]


def json_response(completion: Completion) -> JsonObject:
    """JSON mode's ``response``: the object the constrained output spells."""
    try:
        value = json.loads(completion.text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        reason = "it reached max_tokens first" if completion.finish_reason == "length" else "it is not"
        raise bad_input(
            f"JSON Mode couldn't be met: the output is not a complete JSON object ({reason})",
            param="max_tokens" if completion.finish_reason == "length" else "response_format",
        )
    return value


def run_result(request: RunRequest, completion: Completion) -> RunResult:
    if completion.tool_calls:
        calls = [LegacyToolCall.of(call) for call in completion.tool_calls]
        return RunResult(response="", usage=completion.usage, tool_calls=calls)
    response = json_response(completion) if request.wants_json else completion.text
    return RunResult(response=response, usage=completion.usage)


async def run_json(handle: GenerationHandle, receive: Receive, request: RunRequest) -> RunEnvelope:
    completion = await handle.answer(receive)
    return RunEnvelope(result=run_result(request, completion))


class ErrorFrame(StreamFrame, omit_defaults=True):
    errors: list[CloudflareError] | None = None


def output_frame(output: Output) -> bytes:
    if isinstance(output, Delta):
        return frame(StreamFrame(response=output.text, p=padding()))
    return frame(StreamFrame(response="", tool_calls=[LegacyToolCall.of(call) for call in output.calls]))


def error_frame(error: SluiceError) -> bytes:
    return frame(ErrorFrame(response="", errors=cloudflare_body(error).errors))


def run_stream(handle: GenerationHandle) -> AsyncIterator[bytes]:
    return event_stream(handle, _frames(handle), error_frame)


async def _frames(handle: GenerationHandle) -> AsyncIterator[bytes]:
    async for output in handle.outputs():
        yield output_frame(output)
    assert handle.done is not None
    yield frame(StreamFrame(response="", usage=handle.done.usage))
