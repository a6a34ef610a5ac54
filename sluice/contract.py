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
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

# --- Redis keys -------------------------------------------------------------------------------

#: Function name the worker registers with arq and the gateway enqueues.
GENERATE = "generate"
#: The single field of every stream entry; its value is an encoded :data:`Event`.
EVENT_FIELD = b"e"
#: In a gateway's inbox (:func:`inbox_key`), the field naming the job stream whose first write an
#: entry copies, and the field with that write's last entry id; its events follow, each an
#: :data:`EVENT_FIELD`. An entry without them only wakes the relay.
INBOX_STREAM_FIELD = b"k"
INBOX_LAST_FIELD = b"i"
#: Entries an inbox keeps (about): far more than a relay takes in one read.
INBOX_MAXLEN = 10_000
#: Sorted set: worker id -> last heartbeat (ms since the epoch).
WORKERS_KEY = "sluice:workers"


#: arq's default lifetime of a queued job's data (its ``expires_extra_ms``): a job not started by
#: then is not started at all.
JOB_EXPIRES_MS = 86_400_000


def queue_key(model: str) -> str:
    """The arq queue (a sorted set) of jobs for one served model."""
    return f"sluice:queue:{model}"


def direct_queue_key(queue: str, worker_id: str) -> str:
    """The arq queue of ``queue``'s jobs routed to one worker (its adapter, a session's affinity)."""
    return f"{queue}:worker:{worker_id}"


def pickup_channel(queue: str) -> str:
    """Pub/sub channel that wakes the workers of ``queue`` when a job lands on it (they poll only
    as a fallback): a job is picked up as soon as it is queued, and idle workers cost nothing."""
    return f"sluice:pickup:{queue}"


#: Pub/sub channel that wakes every worker when a job is aborted, so the one running it stops now.
ABORTS_CHANNEL = "sluice:aborts"


def accepting_key(worker_id: str) -> str:
    """Present while a worker takes routed jobs (refreshed with its heartbeat; gone when it drains,
    stops or dies): without it, the gateway's enqueue sends them to the shared queue instead."""
    return f"sluice:accepting:{worker_id}"


def affinity_key(session: str) -> str:
    """The worker a session (``x-session-affinity``) is pinned to, while that worker lives."""
    return f"sluice:affinity:{session}"


def events_key(job_id: str) -> str:
    """The Redis Stream of one job's events."""
    return f"sluice:events:{job_id}"


def event_writer_key(writer_id: str) -> str:
    """The number of the last write of one event writer (a worker's publisher) that Redis applied."""
    return f"sluice:written:{writer_id}"


def tokenizer_key(model: str) -> str:
    """The served model's ``tokenizer.json``, published by its workers for the gateway's counts."""
    return f"sluice:tokenizer:{model}"


def worker_key(worker_id: str) -> str:
    """A worker's advertisement (:class:`WorkerInfo`), expiring unless refreshed."""
    return f"sluice:worker:{worker_id}"


def running_key(worker_id: str) -> str:
    """The set of job ids a worker is running: what recovery takes over if the worker dies."""
    return f"sluice:running:{worker_id}"


def claim_receipts_key(worker_id: str) -> str:
    """A worker's last claim of each of its queues' jobs, by its number (a hash, by queue): asked
    again, answered again."""
    return f"sluice:receipts:{worker_id}"


def finetune_names_key(account: str) -> str:
    """Hash: an account's finetune (LoRA adapter) names -> ids; also the account's list of them."""
    return f"sluice:finetunes:{account}"


def finetune_key(account: str, finetune_id: str) -> str:
    """Hash: one finetune's metadata (field ``meta``) and a field per accepted adapter file."""
    return f"sluice:finetune:{account}:{finetune_id}"


def tombstone_key(worker_id: str) -> str:
    """Left by recovery when it takes a silent worker's jobs: the worker, if only stalled, exits."""
    return f"sluice:evicted:{worker_id}"


def recovering_key(job_id: str) -> str:
    """Held briefly by the one process that recovers a job whose worker died as it took it up."""
    return f"sluice:recovering:{job_id}"


def fair_tags_key(queue: str) -> str:
    """Sorted set: account -> the virtual time its next job starts at (``sluice/fairqueue.py``)."""
    return f"sluice:fair:tags:{queue}"


def fair_clock_key(queue: str) -> str:
    """A queue's virtual clock: the tag of the latest job a worker started (one member, ``v``)."""
    return f"sluice:fair:clock:{queue}"


def inbox_key(gateway_id: str) -> str:
    """A gateway process's inbox, the stream its relay always reads: each of its jobs' first
    write is copied there (``sluice/events.py``), so a first token comes in the read already
    waiting, not in one the relay must start again to include a new job's stream."""
    return f"sluice:inbox:{gateway_id}"


def gateway_key(gateway_id: str) -> str:
    """Present while a gateway process is alive (refreshed, expiring): the reader of its jobs."""
    return f"sluice:gateway:{gateway_id}"


# --- The one internal request schema ------------------------------------------------------------

Content = Annotated[str, Meta(max_length=131072)]
#: Messages in one request: far beyond any real conversation (the context window ends it sooner),
#: low enough that a hostile body costs little to refuse.
MAX_MESSAGES = 4096
JsonObject = dict[str, Any]
NO_PARAMETERS: JsonObject = {"type": "object", "properties": {}}


class TextPart(Struct, forbid_unknown_fields=False):
    type: Literal["text"]
    text: Content


class FunctionCall(Struct):
    """A call as OpenAI clients send it back in an assistant message (``arguments`` is JSON text)."""

    name: str
    arguments: str


class ToolCallIn(Struct, kw_only=True):
    id: str
    function: FunctionCall
    type: Literal["function"] = "function"


class Message(Struct, omit_defaults=True):
    role: str
    content: Content | list[TextPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[ToolCallIn] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class Function(Struct, omit_defaults=True):
    name: Annotated[str, Meta(min_length=1, max_length=256)]
    description: str = ""
    #: A JSON Schema object; the seed schema asks for ``{type, properties, required?}``.
    parameters: JsonObject = msgspec.field(default_factory=lambda: dict(NO_PARAMETERS))


class Tool(Struct, omit_defaults=True):
    """Either shape the schema allows: ``{name, description, parameters}`` (legacy) or OpenAI's
    ``{type: "function", function: {…}}``. :meth:`spec` gives the one normal form."""

    type: Literal["function"] | None = None
    function: Function | None = None
    name: Annotated[str, Meta(min_length=1, max_length=256)] | None = None
    description: str | None = None
    parameters: JsonObject | None = None

    def __post_init__(self) -> None:
        if (self.function is None) == (self.name is None):
            raise ValueError("each tool is either {name, description, parameters} or {type, function}")

    def spec(self) -> Function:
        if self.function is not None:
            return self.function
        assert self.name is not None
        return Function(self.name, self.description or "", self.parameters or dict(NO_PARAMETERS))


class FunctionCode(Struct):
    """The schema's ``functions`` entries: code the caller defines (accepted, not executed)."""

    name: str
    code: str


class FunctionName(Struct):
    name: str


class NamedToolChoice(Struct):
    function: FunctionName
    type: Literal["function"] = "function"


#: OpenAI's ``tool_choice``; not a Workers AI field, carried so the translation loses nothing.
ToolChoice = Literal["auto", "none", "required"] | NamedToolChoice


class ResponseFormat(Struct, omit_defaults=True):
    """JSON mode. Native clients send a bare schema under ``json_schema``; the OpenAI translation
    unwraps OpenAI's ``{name, schema, strict}`` into the same."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonObject | None = None

    @property
    def is_json(self) -> bool:
        return self.type != "text"


class GenerationInput(Struct, omit_defaults=True):
    """The Workers AI text-generation input, Prompt or Messages form, with the seed's bounds."""

    prompt: Annotated[str, Meta(min_length=1, max_length=131072)] | None = None
    messages: Annotated[list[Message], Meta(min_length=1, max_length=MAX_MESSAGES)] | None = None
    raw: bool = False
    stream: bool = False
    max_tokens: Annotated[int, Meta(ge=1)] = 256
    temperature: Annotated[float, Meta(ge=0, le=5)] = 0.6
    top_p: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_k: Annotated[int, Meta(ge=1, le=50)] | None = None
    seed: Annotated[int, Meta(ge=1, le=9999999999)] | None = None
    repetition_penalty: Annotated[float, Meta(ge=0, le=2)] | None = None
    #: OpenAI's range, which both engines honour; the Workers AI edge keeps its own, 0-2
    #: (``gateway/native/protocol.py``).
    frequency_penalty: Annotated[float, Meta(ge=-2, le=2)] | None = None
    presence_penalty: Annotated[float, Meta(ge=-2, le=2)] | None = None
    lora: str | None = None
    tools: list[Tool] | None = None
    functions: list[FunctionCode] | None = None
    response_format: ResponseFormat | None = None
    #: OpenAI's ``stop``; not a Workers AI field, carried so the translation loses nothing.
    stop: list[str] | None = None
    tool_choice: ToolChoice | None = None

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("exactly one of 'prompt' or 'messages' is required")

    @property
    def wants_json(self) -> bool:
        return self.response_format is not None and self.response_format.is_json

    @property
    def tools_offered(self) -> list[Function]:
        """The tools the model may call (none when ``tool_choice`` is ``"none"``)."""
        if not self.tools or self.tool_choice == "none":
            return []
        return [tool.spec() for tool in self.tools]


class AdapterRef(Struct, frozen=True):
    """A LoRA adapter (finetune) by where its files are: ``<adapter dir>/<account>/<id>/``."""

    account: str
    id: str


class Reservation(Struct, frozen=True):
    """The tokens an API key reserved for a request at its admission (its rate limits)."""

    key: str  # the key's id
    tokens: int


class Job(Struct, omit_defaults=True):
    """The arq job payload: one generation request for one served model."""

    id: str
    model: str
    input: GenerationInput
    #: The adapter ``input.lora`` names, as the gateway found it (ready, this model's).
    adapter: AdapterRef | None = None
    enqueued_at: float = msgspec.field(default_factory=time.time)
    #: The gateway process relaying the answer; a job whose gateway is gone is not run on.
    gateway: str = ""
    #: Settled to what the job used by the write of its last event (sluice/reservations.py).
    reservation: Reservation | None = None


# --- Events on a job's stream -----------------------------------------------------------------

FinishReason = Literal["stop", "length", "tool_calls", "abort", "error"]


class Usage(Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class Started(Struct, tag="started"):
    """The worker picked the job up; ``attempt`` counts from 1; ``at`` is its wall clock then,
    which against :attr:`Job.enqueued_at` gives the time a job waited in the queue. Written with
    the attempt's first events, in the same write (an attempt that never got as far as an answer
    or an error may have none)."""

    worker: str
    attempt: int = 1
    at: float = msgspec.field(default_factory=time.time)


class Delta(Struct, tag="delta"):
    """Newly generated text, possibly several tokens coalesced."""

    text: str
    tokens: int


class ToolCall(Struct):
    """A tool call parsed from the model's output; ``arguments`` is the decoded object."""

    id: str
    name: str
    arguments: JsonObject


class ToolCalls(Struct, tag="tool_calls"):
    """The answer is a request to call tools (sent instead of text, before :class:`Done`)."""

    calls: list[ToolCall]


class Done(Struct, tag="done"):
    finish_reason: FinishReason
    usage: Usage


class Failed(Struct, tag="failed"):
    """The job ended in an error; the fields rebuild a ``SluiceError`` at the gateway."""

    code: int
    status: int
    message: str
    retryable: bool = False


Event = Started | Delta | ToolCalls | Done | Failed


def coalesce(events: Sequence[Event]) -> list[Event]:
    """Consecutive deltas merged into one: fewer stream entries, fewer frames, same text."""
    merged: list[Event] = []
    for event in events:
        last = merged[-1] if merged else None
        if isinstance(event, Delta) and isinstance(last, Delta):
            merged[-1] = Delta(text=last.text + event.text, tokens=last.tokens + event.tokens)
        else:
            merged.append(event)
    return merged


class WorkerInfo(Struct):
    """What a worker advertises about itself while alive."""

    id: str
    model: str
    engine: str
    queue: str
    slots: int
    started_at: float
    #: Stopping: it finishes what it runs but takes no more jobs (its slots are not free).
    draining: bool = False
    #: Jobs running now, and the LoRA adapters (finetune ids) its engine holds loaded.
    running: int = 0
    adapters: list[str] = msgspec.field(default_factory=list)


# --- Codec ----------------------------------------------------------------------------------

_encoder = msgspec.msgpack.Encoder()
_job_decoder = msgspec.msgpack.Decoder(Job)
_event_decoder: msgspec.msgpack.Decoder[Event] = msgspec.msgpack.Decoder(Event)
_worker_decoder = msgspec.msgpack.Decoder(WorkerInfo)


def encode(value: Job | Event | WorkerInfo) -> bytes:
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
