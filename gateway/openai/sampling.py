"""What both OpenAI generation endpoints share: the sampling fields, and their native translation."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from sluice.contract import GenerationInput
from sluice.errors import bad_input

#: The native seed range; OpenAI takes any integer, so other seeds are folded into it.
_SEED_MAX = 9_999_999_999


class StreamOptions(msgspec.Struct):
    include_usage: bool = False


class SamplingRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Strict like OpenAI's API: an unknown field is a 400 naming it, never silently dropped."""

    model: str
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    seed: int | None = None
    stop: str | Annotated[list[str], Meta(max_length=4)] | None = None
    frequency_penalty: Annotated[float, Meta(ge=-2, le=2)] | None = None
    presence_penalty: Annotated[float, Meta(ge=-2, le=2)] | None = None
    n: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Sampling extensions vLLM and SGLang accept (OpenAI SDK users send them via extra_body).
    top_k: Annotated[int, Meta(ge=1, le=50)] | None = None
    repetition_penalty: Annotated[float, Meta(ge=0, le=2)] | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def native_seed(seed: int | None) -> int | None:
    """Same OpenAI seed, same native seed: reproducibility is what a seed promises."""
    if seed is None or 1 <= seed <= _SEED_MAX:
        return seed
    return seed % _SEED_MAX + 1


def sampling_fields(request: SamplingRequest) -> dict[str, Any]:
    """The shared fields under their native names and in the native ranges."""
    return {
        "stream": bool(request.stream),
        "temperature": request.temperature,
        "top_p": request.top_p,
        "top_k": request.top_k,
        "seed": native_seed(request.seed),
        "repetition_penalty": request.repetition_penalty,
        "frequency_penalty": request.frequency_penalty,
        "presence_penalty": request.presence_penalty,
        "stop": [request.stop] if isinstance(request.stop, str) else request.stop,
    }


def refuse(field: str | None) -> None:
    """A field Sluice cannot honour is a 400 naming it."""
    if field is not None:
        raise bad_input(f"{field}: not supported by this server", param=field)


def native_input(fields: dict[str, Any]) -> GenerationInput:
    """The native input; unset fields take the native defaults, and its bounds are checked."""
    try:
        return msgspec.convert(
            {k: v for k, v in fields.items() if v is not None}, GenerationInput, from_attributes=True
        )
    except msgspec.ValidationError as exc:
        raise bad_input(str(exc)) from None
