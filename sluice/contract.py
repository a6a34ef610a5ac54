"""Everything that crosses Redis between gateway and worker, and nothing else.

- The job envelope (:class:`Job`) carrying the one internal request schema, the Workers AI input
  of ``@cf/meta/llama-3.1-8b-instruct`` (:class:`GenerationInput`, bounds from the seed schema).
- The events a worker appends to a job's Redis Stream (:data:`Event`).
- The Redis key names both sides use.
- The msgpack codec for all of it.

The gateway and the worker both import this module; it imports neither of them.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

# --- Redis keys -------------------------------------------------------------------------------

#: Function name the worker registers with arq and the gateway enqueues.
GENERATE = "generate"
#: The single field of every stream entry; its value is an encoded :data:`Event`.
EVENT_FIELD = b"e"
#: Sorted set: worker id -> last heartbeat (ms since the epoch).
WORKERS_KEY = "sluice:workers"


def queue_key(model: str) -> str:
    """The arq queue (a sorted set) of jobs for one served model."""
    return f"sluice:queue:{model}"


def events_key(job_id: str) -> str:
    """The Redis Stream of one job's events."""
    return f"sluice:events:{job_id}"


def worker_key(worker_id: str) -> str:
    """A worker's advertisement (:class:`WorkerInfo`), expiring unless refreshed."""
    return f"sluice:worker:{worker_id}"


# --- The one internal request schema ------------------------------------------------------------

Content = Annotated[str, Meta(max_length=131072)]


class TextPart(Struct, forbid_unknown_fields=False):
    type: Literal["text"]
    text: Content


class Message(Struct, omit_defaults=True):
    role: str
    content: Content | list[TextPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class GenerationInput(Struct, omit_defaults=True):
    """The Workers AI text-generation input, Prompt or Messages form, with the seed's bounds."""

    prompt: Annotated[str, Meta(min_length=1, max_length=131072)] | None = None
    messages: list[Message] | None = None
    raw: bool = False
    stream: bool = False
    max_tokens: Annotated[int, Meta(ge=1)] = 256
    temperature: Annotated[float, Meta(ge=0, le=5)] = 0.6
    top_p: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_k: Annotated[int, Meta(ge=1, le=50)] | None = None
    seed: Annotated[int, Meta(ge=1, le=9999999999)] | None = None
    repetition_penalty: Annotated[float, Meta(ge=0, le=2)] | None = None
    frequency_penalty: Annotated[float, Meta(ge=0, le=2)] | None = None
    presence_penalty: Annotated[float, Meta(ge=0, le=2)] | None = None
    lora: str | None = None
    tools: list[dict[str, Any]] | None = None
    functions: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None
    #: OpenAI's ``stop``; not a Workers AI field, carried so the translation loses nothing.
    stop: list[str] | None = None

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("exactly one of 'prompt' or 'messages' is required")


class Job(Struct, omit_defaults=True):
    """The arq job payload: one generation request for one served model."""

    id: str
    model: str
    input: GenerationInput
    enqueued_at: float = msgspec.field(default_factory=time.time)


# --- Events on a job's stream -----------------------------------------------------------------

FinishReason = Literal["stop", "length", "tool_calls", "abort", "error"]


class Usage(Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class Started(Struct, tag="started"):
    """The worker picked the job up; ``attempt`` counts from 1."""

    worker: str
    attempt: int = 1


class Delta(Struct, tag="delta"):
    """Newly generated text, possibly several tokens coalesced."""

    text: str
    tokens: int


class Done(Struct, tag="done"):
    finish_reason: FinishReason
    usage: Usage


class Failed(Struct, tag="failed"):
    """The job ended in an error; the fields rebuild a ``SluiceError`` at the gateway."""

    code: int
    status: int
    message: str
    retryable: bool = False


Event = Started | Delta | Done | Failed


class WorkerInfo(Struct):
    """What a worker advertises about itself while alive."""

    id: str
    model: str
    engine: str
    queue: str
    slots: int
    started_at: float


# --- Codec ----------------------------------------------------------------------------------

_encoder = msgspec.msgpack.Encoder()
_job_decoder = msgspec.msgpack.Decoder(Job)
_event_decoder: msgspec.msgpack.Decoder[Event] = msgspec.msgpack.Decoder(Event)
_worker_decoder = msgspec.msgpack.Decoder(WorkerInfo)


def encode(value: Job | Started | Delta | Done | Failed | WorkerInfo) -> bytes:
    return _encoder.encode(value)


def decode_job(data: bytes) -> Job:
    return _job_decoder.decode(data)


def decode_event(data: bytes) -> Event:
    event: Event = _event_decoder.decode(data)
    return event


def decode_worker(data: bytes) -> WorkerInfo:
    return _worker_decoder.decode(data)


def serialize_arq_job(value: dict[str, Any]) -> bytes:
    """arq's job serializer: msgpack instead of pickle, so nothing executable crosses Redis."""
    return _encoder.encode(value)


def deserialize_arq_job(data: bytes) -> dict[str, Any]:
    result: dict[str, Any] = msgspec.msgpack.decode(data)
    return result
