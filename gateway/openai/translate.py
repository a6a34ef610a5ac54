"""The OpenAI ⇄ native translation pair: requests in, responses out. Nothing else knows OpenAI."""

from __future__ import annotations

import msgspec

from gateway.generation import Completion
from gateway.openai.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    ChunkDelta,
)
from sluice.contract import GenerationInput, Usage
from sluice.errors import bad_input


def to_native(request: ChatCompletionRequest) -> GenerationInput:
    """An OpenAI chat request as the Workers AI input; bounds are checked by the native type."""
    if request.n not in (None, 1):
        raise bad_input("n: only n=1 is supported", param="n")
    fields = {
        "messages": request.messages,
        "stream": request.stream,
        "max_tokens": request.max_completion_tokens or request.max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "seed": request.seed,
        "frequency_penalty": request.frequency_penalty,
        "presence_penalty": request.presence_penalty,
        "stop": [request.stop] if isinstance(request.stop, str) else request.stop,
    }
    try:
        return msgspec.convert({k: v for k, v in fields.items() if v is not None}, GenerationInput)
    except msgspec.ValidationError as exc:
        raise bad_input(str(exc)) from None


def to_completion(request_id: str, created: int, model: str, completion: Completion) -> ChatCompletion:
    return ChatCompletion(
        id=f"chatcmpl-{request_id}",
        created=created,
        model=model,
        choices=[Choice(0, AssistantMessage(completion.text), completion.finish_reason)],
        usage=completion.usage,
    )


class ChunkWriter:
    """Builds the chunks of one streamed completion, all with the same id and timestamp."""

    def __init__(self, request_id: str, created: int, model: str) -> None:
        self.id = f"chatcmpl-{request_id}"
        self.created = created
        self.model = model

    def delta(self, content: str | None = None, *, role: bool = False) -> ChatCompletionChunk:
        delta = ChunkDelta(role="assistant" if role else None, content=content)
        return ChatCompletionChunk(self.id, self.created, self.model, [ChunkChoice(0, delta)])

    def finish(self, reason: str) -> ChatCompletionChunk:
        return ChatCompletionChunk(self.id, self.created, self.model, [ChunkChoice(0, ChunkDelta(), reason)])

    def usage(self, usage: Usage) -> ChatCompletionChunk:
        return ChatCompletionChunk(self.id, self.created, self.model, [], usage=usage)
