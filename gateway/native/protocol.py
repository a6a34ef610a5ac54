"""Workers AI types: the request (the model's input plus request ``options``), the v4 success
envelope and the SSE frames of a stream."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from sluice.contract import GenerationInput, JsonObject, ToolCall, Usage


class RunOptions(msgspec.Struct, forbid_unknown_fields=True):
    """Request options that are not model input (``reference/workers-ai-api.md`` §1.2)."""

    #: Answer 429 / 3040 at once instead of queueing when no worker has room.
    reject_if_busy: bool = msgspec.field(default=False, name="rejectIfBusy")


class RunRequest(GenerationInput, forbid_unknown_fields=True, omit_defaults=True):
    """The body of ``/ai/run``: strict, as Workers AI rejects properties its schema lacks. It is a
    :class:`GenerationInput` itself, so it is queued as is (the worker ignores ``options``)."""

    options: RunOptions | None = None
    # The model's schema: only discouraging penalties (OpenAI's may be negative too).
    frequency_penalty: Annotated[float, Meta(ge=0, le=2)] | None = None
    presence_penalty: Annotated[float, Meta(ge=0, le=2)] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for i, message in enumerate(self.messages or ()):
            # Required by the schema; OpenAI's assistant tool-call turns are the one exception.
            if message.content is None and not message.tool_calls:
                raise ValueError(f"messages[{i}].content is required")
        if self.stream and self.wants_json:
            raise ValueError("JSON Mode currently doesn't support streaming")


class LegacyToolCall(msgspec.Struct):
    """The tool-call shape this model's output schema documents: ``arguments`` is an object."""

    name: str
    arguments: JsonObject

    @classmethod
    def of(cls, call: ToolCall) -> LegacyToolCall:
        return cls(call.name, call.arguments)


class RunResult(msgspec.Struct, omit_defaults=True):
    #: Text; in JSON mode the parsed object, as Workers AI answers.
    response: str | JsonObject
    usage: Usage
    tool_calls: list[LegacyToolCall] | None = None


class RunEnvelope(msgspec.Struct):
    result: RunResult
    success: bool = True
    errors: list[object] = msgspec.field(default_factory=list)
    messages: list[object] = msgspec.field(default_factory=list)


class StreamFrame(msgspec.Struct, omit_defaults=True):
    """One ``data:`` frame. ``p`` is random-length padding, as Cloudflare sends against
    token-length side channels; ``usage`` rides on the last frame before ``[DONE]``."""

    response: str
    p: str | None = None
    tool_calls: list[LegacyToolCall] | None = None
    usage: Usage | None = None
