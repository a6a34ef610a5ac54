"""OpenAI chat-completions types, as the official SDK sends and parses them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta

from gateway.openai.sampling import SamplingRequest
from sluice.contract import MAX_MESSAGES, JsonObject, Message, Tool, ToolChoice, Usage


class JsonSchemaFormat(msgspec.Struct):
    """OpenAI's wrapper around the schema; the translation passes on only ``schema``."""

    name: Annotated[str, Meta(min_length=1, max_length=64)]
    schema: JsonObject = msgspec.field(default_factory=lambda: {"type": "object"})
    description: str | None = None
    strict: bool | None = None


class ResponseFormat(msgspec.Struct, omit_defaults=True):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    def __post_init__(self) -> None:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type 'json_schema' needs 'json_schema'")


class ChatCompletionRequest(SamplingRequest, kw_only=True, forbid_unknown_fields=True):
    messages: Annotated[list[Message], Meta(min_length=1, max_length=MAX_MESSAGES)]
    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Meta(ge=1)] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    # Accepted and ignored: bookkeeping that changes nothing about the answer.
    store: bool | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    # Known OpenAI fields Sluice cannot honour: any value other than "off" is a 400 naming it.
    logprobs: bool | None = None
    top_logprobs: Any = UNSET
    logit_bias: dict[str, float] | None = None
    audio: Any = UNSET
    modalities: list[str] | None = None
    prediction: Any = UNSET
    web_search_options: Any = UNSET
    reasoning_effort: Any = UNSET
    verbosity: Any = UNSET
    functions: Any = UNSET
    function_call: Any = UNSET

    def unsupported(self) -> str | None:
        """The first field set to something Sluice cannot do, or ``None``."""
        checks: dict[str, bool] = {
            "n": self.n not in (None, 1),
            "logprobs": bool(self.logprobs),
            "top_logprobs": self.top_logprobs not in (UNSET, None, 0),
            "logit_bias": bool(self.logit_bias),
            "audio": self.audio not in (UNSET, None),
            "modalities": self.modalities not in (None, ["text"]),
            "prediction": self.prediction not in (UNSET, None),
            "web_search_options": self.web_search_options not in (UNSET, None),
            "reasoning_effort": self.reasoning_effort not in (UNSET, None),
            "verbosity": self.verbosity not in (UNSET, None),
            "functions": self.functions not in (UNSET, None),
            "function_call": self.function_call not in (UNSET, None),
        }
        return next((name for name, bad in checks.items() if bad), None)


class FunctionCallOut(msgspec.Struct):
    name: str
    #: JSON text, as OpenAI sends it.
    arguments: str


class ToolCallOut(msgspec.Struct):
    id: str
    function: FunctionCallOut
    type: Literal["function"] = "function"


class AssistantMessage(msgspec.Struct):
    content: str | None
    role: Literal["assistant"] = "assistant"
    tool_calls: list[ToolCallOut] | None = None
    refusal: None = None


class Choice(msgspec.Struct):
    index: int
    message: AssistantMessage
    finish_reason: str
    logprobs: None = None


class ChatCompletion(msgspec.Struct):
    id: str
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    object: Literal["chat.completion"] = "chat.completion"


class ToolCallChunk(msgspec.Struct):
    index: int
    id: str
    function: FunctionCallOut
    type: Literal["function"] = "function"


class ChunkDelta(msgspec.Struct, omit_defaults=True):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallChunk] | None = None


class ChunkChoice(msgspec.Struct):
    index: int
    delta: ChunkDelta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(msgspec.Struct):
    id: str
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
