"""The OpenAI ⇄ native translation pair for chat: requests in, responses out.

Nothing downstream of the gateway knows which API a client spoke.
"""

from __future__ import annotations

import json

import msgspec

from gateway.generation import Completion
from gateway.openai.chat.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    ChunkDelta,
    FunctionCallOut,
    ToolCallChunk,
    ToolCallOut,
)
from gateway.openai.sampling import native_input, refuse, sampling_fields
from sluice.contract import GenerationInput, Message, ResponseFormat, ToolCall, Usage


def native_message(message: Message) -> Message:
    # OpenAI's "developer" role is its newer name for "system".
    return msgspec.structs.replace(message, role="system") if message.role == "developer" else message


def native_format(request: ChatCompletionRequest) -> ResponseFormat | None:
    fmt = request.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object" or fmt.json_schema is None:
        return ResponseFormat(type="json_object")
    # Workers AI takes the bare schema, not OpenAI's {name, schema, strict} wrapper.
    return ResponseFormat(type="json_schema", json_schema=fmt.json_schema.schema)


def to_native(request: ChatCompletionRequest) -> GenerationInput:
    """An OpenAI chat request as the Workers AI input; bounds are checked by the native type."""
    refuse(request.unsupported())
    return native_input(
        {
            **sampling_fields(request),
            "messages": [native_message(m) for m in request.messages],
            "max_tokens": request.max_completion_tokens or request.max_tokens,
            "tools": request.tools,
            "tool_choice": request.tool_choice,
            "response_format": native_format(request),
        }
    )


def tool_call_out(call: ToolCall) -> ToolCallOut:
    return ToolCallOut(call.id, FunctionCallOut(call.name, json.dumps(call.arguments)))


def allowed_calls(calls: list[ToolCall], *, parallel: bool) -> list[ToolCall]:
    """The calls an answer may carry: with ``parallel_tool_calls: false``, the first one only (the
    model may write several in one turn; OpenAI's flag promises at most one)."""
    return calls if parallel else calls[:1]


def to_completion(
    request_id: str, created: int, model: str, completion: Completion, *, parallel: bool = True
) -> ChatCompletion:
    calls = [tool_call_out(call) for call in allowed_calls(completion.tool_calls, parallel=parallel)] or None
    message = AssistantMessage(content=None if calls else completion.text, tool_calls=calls)
    return ChatCompletion(
        id=f"chatcmpl-{request_id}",
        created=created,
        model=model,
        choices=[Choice(0, message, completion.finish_reason)],
        usage=completion.usage,
    )


class ChunkWriter:
    """Builds the chunks of one streamed completion, all with the same id and timestamp."""

    def __init__(self, request_id: str, created: int, model: str, *, parallel: bool = True) -> None:
        self.id = f"chatcmpl-{request_id}"
        self.created = created
        self.model = model
        self.parallel = parallel

    def _chunk(self, delta: ChunkDelta, finish_reason: str | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(self.id, self.created, self.model, [ChunkChoice(0, delta, finish_reason)])

    def delta(self, content: str | None = None, *, role: bool = False) -> ChatCompletionChunk:
        return self._chunk(ChunkDelta(role="assistant" if role else None, content=content))

    def tool_calls(self, calls: list[ToolCall], *, role: bool = False) -> ChatCompletionChunk:
        # Whole calls in one chunk: OpenAI splits arguments into pieces, but SDKs concatenate
        # whatever arrives per index, so one piece is parsed the same way.
        calls = allowed_calls(calls, parallel=self.parallel)
        chunks = [ToolCallChunk(i, call.id, tool_call_out(call).function) for i, call in enumerate(calls)]
        return self._chunk(ChunkDelta(role="assistant" if role else None, tool_calls=chunks))

    def finish(self, reason: str) -> ChatCompletionChunk:
        return self._chunk(ChunkDelta(), reason)

    def usage(self, usage: Usage) -> ChatCompletionChunk:
        return ChatCompletionChunk(self.id, self.created, self.model, [], usage=usage)
