"""The OpenAI completions ⇄ native translation pair: a raw prompt in, text choices out."""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.openai.chat.translate import native_seed
from gateway.openai.completions.protocol import CompletionChoice, CompletionRequest, TextCompletion
from sluice.contract import GenerationInput, Usage
from sluice.errors import bad_input


def to_native(request: CompletionRequest) -> GenerationInput:
    """The legacy API sends its prompt verbatim: the native ``raw`` form, no chat template."""
    field = request.unsupported()
    if field is not None:
        raise bad_input(f"{field}: not supported by this server", param=field)
    fields: dict[str, Any] = {
        "prompt": request.text,
        "raw": True,
        "stream": bool(request.stream),
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "top_k": request.top_k,
        "seed": native_seed(request.seed),
        "repetition_penalty": request.repetition_penalty,
        "frequency_penalty": request.frequency_penalty,
        "presence_penalty": request.presence_penalty,
        "stop": [request.stop] if isinstance(request.stop, str) else request.stop,
    }
    try:
        return msgspec.convert({k: v for k, v in fields.items() if v is not None}, GenerationInput)
    except msgspec.ValidationError as exc:
        raise bad_input(str(exc)) from None


class CompletionWriter:
    """The objects of one completion, whole or streamed, all with the same id and timestamp."""

    def __init__(self, request_id: str, created: int, model: str) -> None:
        self.id = f"cmpl-{request_id}"
        self.created = created
        self.model = model

    def whole(self, text: str, finish_reason: str, usage: Usage) -> TextCompletion:
        return TextCompletion(
            self.id, self.created, self.model, [CompletionChoice(0, text, finish_reason)], usage
        )

    def chunk(self, text: str, finish_reason: str | None = None) -> TextCompletion:
        return TextCompletion(self.id, self.created, self.model, [CompletionChoice(0, text, finish_reason)])

    def usage(self, usage: Usage) -> TextCompletion:
        return TextCompletion(self.id, self.created, self.model, [], usage)
