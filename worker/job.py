"""The arq job: run one request on the engine and publish its events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from redis.exceptions import RedisError

from sluice.adapters import adapter_folder
from sluice.contract import (
    Delta,
    Done,
    Event,
    Failed,
    Function,
    Job,
    Started,
    ToolCalls,
    decode_job,
    inbox_key,
)
from sluice.errors import SluiceError, internal, out_of_tries, reader_gone
from sluice.events import Along, Settlement, failed
from sluice.fairqueue import JobEnd
from worker import metrics
from worker.engines.base import AdapterFiles, Engine, Output
from worker.inflight import InFlight
from worker.prompt import prepare
from worker.publish import EventPublisher
from worker.slots import JOB_END
from worker.tools import may_be_tool_call, new_tool_call_id, parse_tool_calls

log = logging.getLogger("sluice.worker.job")


@dataclass(frozen=True)
class JobDeps:
    """What a job needs, put in arq's ``ctx`` once at start-up."""

    engine: Engine
    worker_id: str
    publisher: EventPublisher
    inflight: InFlight
    #: The adapter store's folder, as mounted here.
    adapters: Path


def to_events(outputs: list[Output]) -> tuple[list[Event], bool]:
    """Engine outputs as stream events, and whether the generation has ended."""
    events: list[Event] = []
    for output in outputs:
        if isinstance(output, SluiceError):
            events.append(failed(output))
            return events, True
        events.append(output)
        if isinstance(output, Done):
            return events, True
    return events, False


class ToolCallWatch:
    """With tools offered, text is held back while it may still be a tool call; at the end it is
    parsed, and a call goes out as :class:`ToolCalls` instead of text. Plain answers start
    streaming as soon as their first characters rule a call out."""

    def __init__(self, tools: list[Function]) -> None:
        self._tools = tools
        self._text = ""  # held back so far, and its token count
        self._tokens = 0
        self._deciding = bool(tools)

    def _release(self) -> list[Event]:
        self._deciding = False
        return [Delta(text=self._text, tokens=self._tokens)] if self._tokens or self._text else []

    def filter(self, events: list[Event]) -> list[Event]:
        if not self._deciding:
            return events
        out: list[Event] = []
        for event in events:
            if not self._deciding:
                out.append(event)
            elif isinstance(event, Delta):
                self._text += event.text
                self._tokens += event.tokens
                if not may_be_tool_call(self._text):
                    out.extend(self._release())
            elif isinstance(event, Done):
                calls = parse_tool_calls(self._text, self._tools, new_tool_call_id)
                if calls:
                    self._deciding = False
                    out += [ToolCalls(calls), Done(finish_reason="tool_calls", usage=event.usage)]
                else:
                    out += [*self._release(), event]
            else:
                out.append(event)
        return out


Outcome = Literal["completed", "failed", "aborted"]


async def run_job(deps: JobDeps, job: Job, attempt: int, end: JobEnd | None = None) -> bool:
    """Run the job to its end; ``end``: its end in arq's keys, written with its last events.
    Returns whether it was (else the caller writes it)."""
    metrics.RUNNING.labels(job.model).inc()
    started = time.perf_counter()
    outcome: Outcome = "aborted"  # unless the generation ends on its own
    writes = _Writes(deps, job, attempt, end)
    try:
        outcome = await _run(deps, job, attempt, writes)
    finally:
        seconds = time.perf_counter() - started
        metrics.RUNNING.labels(job.model).dec()
        metrics.JOBS.labels(job.model, outcome).inc()
        metrics.JOB_SECONDS.labels(job.model).observe(seconds)
        # The job id is the gateway's request id: one id across the response, the stream and logs.
        context = {"request_id": job.id, "model": job.model, "attempt": attempt}
        log.info("job ended", extra={**context, "outcome": outcome, "duration_ms": round(seconds * 1000, 2)})
    return writes.ended


class _Writes:
    """One job's events on their way out, through the worker's publisher.

    Started goes out with the job's first events, in their write: a write of its own cost a
    script call here and a read in the gateway per request. Its ``at`` is still when the job
    started, so the queue wait the gateway reads off it is unchanged. That write is also copied
    to the gateway's inbox if it is the stream's first (not a retry's). The job's last events
    carry its end (one round trip fewer per job) and its reservation's settlement. Its events are
    written only while the job is still this worker's (in its running set)."""

    def __init__(self, deps: JobDeps, job: Job, attempt: int, end: JobEnd | None) -> None:
        self._publisher = deps.publisher
        self._job = job
        self._starting: Started | None = Started(worker=deps.worker_id, attempt=attempt)
        self._end = end
        #: The job's end was written, with its last events.
        self.ended = False

    async def publish(self, events: list[Event], *, last: bool = False) -> None:
        job, inbox = self._job, None
        if events and self._starting is not None:
            events, self._starting = [self._starting, *events], None
            inbox = inbox_key(job.gateway) if job.gateway else None
        end = self._end if last and events else None
        owner = self._end.running if self._end is not None else None
        along = Along(settle=_settlement(job, events), inbox=inbox, end=end, owner=owner)
        await self._publisher.publish(job.id, events, along)
        self.ended = end is not None


async def _run(deps: JobDeps, job: Job, attempt: int, writes: _Writes) -> Outcome:
    # At most one round trip (a gateway not seen lately), during which the engine already starts
    # on the prompt; the first events do not wait for it.
    watched = asyncio.ensure_future(deps.inflight.start(job))
    try:
        return await _generate(deps, job, attempt, writes, watched)
    finally:
        await asyncio.wait({watched})  # unwatched only once watched, or it would stay watched
        deps.inflight.end(job.id)
        if not watched.cancelled() and (error := watched.exception()) is not None:
            log.warning("job's gateway not checked: %r", error, extra={"request_id": job.id})


def _settlement(job: Job, events: list[Event]) -> Settlement | None:
    """The job's answer is complete (``Done`` is last): its key's reservation is settled to the
    tokens it used, in the write of that answer's end."""
    if job.reservation is None or not events or not isinstance(done := events[-1], Done):
        return None
    return job.reservation, done.usage.total_tokens


def _gateway_gone(watched: asyncio.Future[bool]) -> bool:
    """The check of the job's gateway has been answered, and says it is gone. A check that
    failed (Redis away) is no reason to stop: the watch checks again."""
    if not watched.done() or watched.cancelled() or watched.exception() is not None:
        return False
    return not watched.result()


async def _generate(
    deps: JobDeps, job: Job, attempt: int, writes: _Writes, watched: asyncio.Future[bool]
) -> Outcome:
    try:
        ref = job.adapter
        adapter = AdapterFiles(ref.id, adapter_folder(deps.adapters, ref)) if ref is not None else None
        request = prepare(job.input, adapter)
    except SluiceError as error:
        await writes.publish([failed(error)], last=True)
        return "failed"
    generation = deps.engine.submit(f"{job.id}:{attempt}", request)
    watch = ToolCallWatch(job.input.tools_offered)
    sent = 0
    try:
        while True:
            events, ended = to_events(await generation.next_batch())
            if _gateway_gone(watched):
                generation.cancel()
                log.info("job not run: its gateway is gone", extra={"request_id": job.id})
                # Never a silent end, should its client be there.
                await writes.publish([failed(reader_gone())], last=True)
                return "aborted"
            events = watch.filter(events)
            await writes.publish(events, last=ended)
            sent += sum(e.tokens for e in events if isinstance(e, Delta))
            if ended:
                return _outcome(deps.engine.name, events)
    except asyncio.CancelledError:
        # Aborted (the client left) or the worker is stopping: the engine must stop at once.
        generation.cancel()
        log.info("job cancelled", extra={"request_id": job.id, "tokens": sent})
        raise
    except Exception as exc:
        generation.cancel()
        log.exception("job failed", extra={"request_id": job.id})
        metrics.ENGINE_ERRORS.labels(deps.engine.name).inc()
        await writes.publish([failed(internal(type(exc).__name__))], last=True)
        return "failed"
    finally:
        metrics.TOKENS.labels(job.model).inc(sent)


def _outcome(engine: str, events: list[Event]) -> Outcome:
    failure = next((e for e in events if isinstance(e, Failed)), None)
    if failure is None:
        return "completed"
    if failure.status >= 500:  # the engine's fault, not the request's
        metrics.ENGINE_ERRORS.labels(engine).inc()
    return "failed"


async def give_up(deps: JobDeps, job_id: str, tries: int) -> None:
    """A job started ``tries`` times is not started again: its stream ends in an error."""
    with contextlib.suppress(RedisError, OSError):  # Redis away: the client's deadline ends it
        await deps.publisher.publish(job_id, [failed(out_of_tries(tries))])


async def generate(ctx: dict[str, Any], payload: bytes) -> bool:
    """The function arq runs; ``payload`` is an encoded :class:`sluice.contract.Job`. Returns
    whether it wrote the job's end (``JOB_END``, ``worker/slots.py``)."""
    return await run_job(ctx["sluice"], decode_job(payload), attempt=ctx["job_try"], end=ctx.get(JOB_END))
