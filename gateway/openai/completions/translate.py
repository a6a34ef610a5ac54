"""The OpenAI completions ⇄ native translation pair: a raw prompt in, text choices out."""

from __future__ import annotations

from gateway.openai.completions.protocol import CompletionChoice, CompletionRequest, TextCompletion
from gateway.openai.sampling import native_input, refuse, sampling_fields
from sluice.contract import GenerationInput, Usage


def to_native(request: CompletionRequest) -> GenerationInput:
    """The legacy API sends its prompt verbatim: the native ``raw`` form, no chat template."""
    refuse(request.unsupported())
    return native_input(
        {**sampling_fields(request), "prompt": request.text, "raw": True, "max_tokens": request.max_tokens}
    )


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
