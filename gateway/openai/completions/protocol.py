"""OpenAI legacy completions types: a prompt in, text out."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from gateway.openai.sampling import SamplingRequest
from sluice.contract import Usage


class CompletionRequest(SamplingRequest, kw_only=True, forbid_unknown_fields=True):
    prompt: Annotated[str, Meta(min_length=1)] | Annotated[list[str], Meta(min_length=1, max_length=1)]
    #: OpenAI's default for this endpoint is 16 tokens.
    max_tokens: Annotated[int, Meta(ge=1)] = 16
    best_of: int | None = None
    # Known fields Sluice cannot honour: anything but "off" is a 400 naming the field.
    echo: bool | None = None
    logprobs: int | None = None
    suffix: str | None = None
    logit_bias: dict[str, float] | None = None

    def unsupported(self) -> str | None:
        checks = {
            "n": self.n not in (None, 1),
            "best_of": self.best_of not in (None, 1),
            "echo": bool(self.echo),
            "logprobs": self.logprobs is not None,
            "suffix": bool(self.suffix),
            "logit_bias": bool(self.logit_bias),
        }
        return next((name for name, bad in checks.items() if bad), None)

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class CompletionChoice(msgspec.Struct):
    index: int
    text: str
    finish_reason: str | None
    logprobs: None = None


class TextCompletion(msgspec.Struct):
    id: str
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    object: Literal["text_completion"] = "text_completion"
