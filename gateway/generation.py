"""One request's round trip, shared by both APIs: enqueue the job, then follow its events.

Nothing here knows which API the client spoke; the routers translate before and after.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, NoReturn

from litestar.types import Receive
from redis.exceptions import RedisError

from gateway import metrics
from gateway.caller import Caller
from gateway.enqueue import JobQueue
from gateway.ratelimit import Admission, RateLimiter
from gateway.relay import StreamRelay, Subscription
from gateway.routing import JobRouter
from gateway.tokens import PromptCounter, upper_estimate
from sluice.adapters import AdapterStore, Finetune, finetune_missing_files
from sluice.config import ServedModel, Settings
from sluice.contract import (
    AdapterRef,
    Delta,
    Done,
    Failed,
    FinishReason,
    GenerationInput,
    Job,
    Reservation,
    Started,
    ToolCall,
    ToolCalls,
    Usage,
    coalesce,
)
from sluice.errors import (
    ErrorCode,
    SluiceError,
    bad_input,
    capacity_exceeded,
    check_context_window,
    client_gone,
    interrupted,
    queue_unavailable,
    rate_limited,
)
from sluice.fairqueue import Backlog, QueueLimits

log = logging.getLogger("sluice.gateway")

#: Seconds a request may spend on Redis before queueing (tokenizer fetch, busy check, enqueue).
REDIS_TIMEOUT = 3.0


#: What a generation's timer delivers when its time is up (told apart from a worker's by identity).
_DEADLINE = Failed(code=int(ErrorCode.TIMEOUT), status=408, message="", retryable=True)


def error_from(event: Failed) -> SluiceError:
    return SluiceError(ErrorCode(event.code), event.status, event.message, retryable=event.retryable)


@dataclass
class Completion:
    """A whole answer, for the non-streaming responses."""

    text: str = ""
    finish_reason: FinishReason = "stop"
    usage: Usage = field(default_factory=Usage)
    tool_calls: list[ToolCall] = field(default_factory=list)


#: What a generation yields before it ends: text, or the tool calls that replace it.
Output = Delta | ToolCalls


async def _disconnected(receive: Receive) -> None:
    """Returns when the client closes the connection (the request body is already read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class Ewma:
    """An exponentially weighted moving average (of queue waits, here)."""

    def __init__(self, weight: float = 0.1) -> None:
        self.value: float | None = None
        self._weight = weight

    def add(self, sample: float) -> None:
        self.value = sample if self.value is None else self.value + self._weight * (sample - self.value)


class GenerationHandle:
    """The events of one queued job. Iterate :meth:`outputs`; ``done`` is set at the end."""

    def __init__(
        self,
        job: Job,
        subscription: Subscription,
        abort: Callable[[str], None],
        timeout: float,
        release: Callable[[int], None] = lambda used: None,
        prompt_tokens: int = 0,
        observe_wait: Callable[[float], None] = lambda seconds: None,
        settled: Callable[[], None] = lambda: None,
    ) -> None:
        """``release`` gives back the reservation of a request that ended without its answer's
        end (the worker settles that of a complete answer, in its write); ``settled`` is told
        when it has."""
        self._observe_wait = observe_wait
        self.job = job
        self.done: Done | None = None
        self._failed = False  # it ended in an error: nothing left to abort
        self._release = release
        self._settled = settled
        self._prompt_tokens = prompt_tokens
        self._generated = 0  # tokens seen so far, for a reservation given back early
        self._subscription = subscription
        self._abort = abort
        self._timeout = timeout
        self._last_output: float | None = None
        self._inter_token = metrics.INTER_TOKEN.labels(job.model)  # observed per output: bound once
        # One timer for the whole wait, which ends it with an event of its own: a timeout scope
        # around each wait for the next event cost a timer and two context switches per event.
        self._deadline = asyncio.get_running_loop().call_later(timeout, subscription.deliver, _DEADLINE)

    @property
    def id(self) -> str:
        return self.job.id

    async def _events(self) -> AsyncIterator[Output | Started]:
        """Outputs as they come, and a :class:`Started` whenever the job starts over on another
        attempt (its worker stopped and handed it back); raises on failure and timeout."""
        while True:
            events = await self._subscription.next()
            # Deltas that arrived together leave together: one frame, one write to the socket.
            for event in coalesce(events):
                if event is _DEADLINE:
                    metrics.ABORTS.labels("timeout").inc()
                    raise SluiceError(
                        ErrorCode.TIMEOUT, 408, f"Request timeout after {self._timeout:.0f}s", retryable=True
                    )
                if isinstance(event, Delta | ToolCalls):
                    self._observe_output()
                    self._generated += event.tokens if isinstance(event, Delta) else 0
                    yield event
                elif isinstance(event, Done):
                    self.done = event
                    self._observe_done(event)
                    return
                elif isinstance(event, Failed):
                    self._failed = True
                    raise error_from(event)
                elif event.attempt == 1:
                    waited = max(0.0, event.at - self.job.enqueued_at)
                    metrics.QUEUE_WAIT.labels(self.job.model).observe(waited)
                    self._observe_wait(waited)
                else:
                    log.info("job %s restarted (attempt %d)", self.id, event.attempt)
                    yield event

    async def outputs(self) -> AsyncIterator[Output]:
        """The answer as it is generated. A job that starts over after part of its answer went
        out ends in an error instead: the client would otherwise see the answer twice."""
        sent = False
        async for event in self._events():
            if isinstance(event, Started):
                if sent:
                    metrics.ABORTS.labels("worker_lost").inc()
                    raise interrupted()
                continue
            sent = True
            yield event

    async def collect(self) -> Completion:
        """The whole answer; a job that starts over replaces what its first attempt had said."""
        text: list[str] = []
        calls: list[ToolCall] = []
        async for event in self._events():
            if isinstance(event, Started):
                text.clear()
                calls.clear()
            elif isinstance(event, Delta):
                text.append(event.text)
            else:
                calls.extend(event.calls)
        assert self.done is not None
        return Completion("".join(text), self.done.finish_reason, self.done.usage, calls)

    async def answer(self, receive: Receive) -> Completion:
        """The whole answer, for a non-streaming response; the handle is closed after. A client
        that hangs up first aborts the job at once instead of leaving it running for nobody."""
        collecting = asyncio.ensure_future(self.collect())
        leaving = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({collecting, leaving}, return_when=asyncio.FIRST_COMPLETED)
            if not collecting.done():
                raise client_gone()
            return collecting.result()
        finally:
            leaving.cancel()
            collecting.cancel()
            self.close()

    def close(self) -> None:
        """Stop following; a job that has not ended is aborted so no engine works for nobody.

        Synchronous on purpose: it runs in ``finally`` blocks of responses whose client is gone,
        where the server has cancelled the task and any further ``await`` would be cancelled too.
        """
        self._deadline.cancel()
        self._subscription.close()
        if self.done is None:
            if not self._failed:  # an abort of an ended job would stay in arq's set for good
                metrics.ABORTS.labels("client_gone").inc()
                self._abort(self.id)
            self._release(self._prompt_tokens + self._generated)
        else:
            self._settled()

    def _observe_output(self) -> None:
        now = time.time()
        model = self.job.model
        if self._last_output is None:
            metrics.FIRST_TOKEN.labels(model).observe(now - self.job.enqueued_at)
        else:
            self._inter_token.observe(now - self._last_output)
        self._last_output = now

    def _observe_done(self, done: Done) -> None:
        model = self.job.model
        metrics.GENERATION_SECONDS.labels(model).observe(time.time() - self.job.enqueued_at)
        metrics.TOKENS.labels(model, "prompt").inc(done.usage.prompt_tokens)
        metrics.TOKENS.labels(model, "completion").inc(done.usage.completion_tokens)


class Generations:
    """Starts generations: the gateway's one dependency for serving a request."""

    def __init__(
        self,
        settings: Settings,
        queue: JobQueue,
        relay: StreamRelay,
        counter: PromptCounter,
        gateway_id: str,
        limiter: RateLimiter,
        adapters: AdapterStore,
        router: JobRouter,
    ) -> None:
        self._adapters = adapters
        self._router = router
        self._gateway_id = gateway_id
        self._limiter = limiter
        self._recent_wait = Ewma()
        self._settings = settings
        self._queue = queue
        self._relay = relay
        self._counter = counter
        self._background: set[asyncio.Task[None]] = set()

    def served(self, model: str) -> ServedModel:
        """The served model by its public name (5007 for one this deployment does not serve)."""
        return self._settings.served(model)

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)  # held until done: the event loop keeps only weak references
        task.add_done_callback(self._background.discard)

    async def settle(self) -> None:
        """Let the writes still in the background (releases, aborts) land, within the Redis bound."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=REDIS_TIMEOUT)

    def _abort(self, job_id: str) -> None:
        self._in_background(self._queue.abort(job_id))

    async def start(
        self,
        model: str,
        request: GenerationInput,
        request_id: str,
        *,
        caller: Caller,
        reject_if_busy: bool = False,
        session: str | None = None,
    ) -> GenerationHandle:
        """Queue one generation; every check that can fail without a worker fails here, first.
        ``session`` (``x-session-affinity``) keeps a conversation on one worker."""
        served, adapter = await self._resolve(model, request.lora, caller)
        try:
            # The tokenizer's fetch is bounded inside; its first parse (seconds, for a large one)
            # is not, so it cannot pass for an unreachable Redis.
            prompt_tokens = await self._counter.count(model, request)
            # Bounded: a Redis that accepts connections but never answers must not hang clients.
            async with asyncio.timeout(REDIS_TIMEOUT):
                return await self._queue_job(
                    served, adapter, request, prompt_tokens, request_id, caller, reject_if_busy, session
                )
        except (RedisError, OSError, TimeoutError) as exc:
            metrics.REJECTIONS.labels("redis_unavailable").inc()
            log.warning("request %s refused: Redis unavailable: %r", request_id, exc)
            raise queue_unavailable() from exc

    async def _resolve(
        self, model: str, lora: str | None, caller: Caller
    ) -> tuple[ServedModel, AdapterRef | None]:
        """The served model and the adapter a request names: native ``lora``, or OpenAI's
        ``model: "<base>:<adapter>"`` or ``model: "<adapter>"``."""
        base, _, suffix = model.partition(":")
        if lora is None and suffix and base in self._settings.model_names:
            model, lora = base, suffix
        if lora is None and model not in self._settings.model_names:
            named = await self._find_adapter(model, caller)
            if named is not None and named.ready:  # an adapter's own name stands for its base + it
                model, lora = named.model, model
        served = self._settings.served(model)  # 5007 for a model this deployment does not serve
        if lora is None:
            return served, None
        found = await self._find_adapter(lora, caller)
        if found is None:
            raise bad_input(f"lora: no LoRA adapter named {lora!r} exists", param="lora")
        if not found.ready:
            raise finetune_missing_files(found)
        if found.model != served.name:
            raise bad_input(f"lora: adapter {lora!r} is for {found.model}, not {served.name}", param="lora")
        return served, AdapterRef(found.account, found.id)

    async def _find_adapter(self, ref: str, caller: Caller) -> Finetune | None:
        """The caller's account's adapter by name or id (another account's is not found)."""
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                return await self._adapters.find(caller.account, ref)
        except (RedisError, OSError, TimeoutError) as exc:
            raise queue_unavailable() from exc

    async def _queue_job(
        self,
        served: ServedModel,
        adapter: AdapterRef | None,
        request: GenerationInput,
        prompt_tokens: int | None,
        request_id: str,
        caller: Caller,
        reject_if_busy: bool,
        session: str | None,
    ) -> GenerationHandle:
        model = served.name
        if prompt_tokens is not None:
            try:
                check_context_window(prompt_tokens, request.max_tokens, served.context_window)
            except SluiceError:
                metrics.REJECTIONS.labels("context_window").inc()
                raise
        if reject_if_busy and await self._queue.busy(model, self._settings.heartbeat_ttl):
            metrics.REJECTIONS.labels("capacity").inc()
            raise capacity_exceeded()
        account = caller.account or ""  # an open deployment: one account, plain arrival order
        prompt = prompt_tokens if prompt_tokens is not None else upper_estimate(request)
        cost = prompt + request.max_tokens
        key = caller.key  # None on an open deployment: nothing is limited
        admission = self._limiter.gate(key, request_id, cost) if key is not None else None
        release = self._release_of(caller, request_id, cost)
        reservation = Reservation(key.id, cost) if key is not None else None
        job = Job(
            id=request_id,
            model=model,
            input=request,
            adapter=adapter,
            gateway=self._gateway_id,
            reservation=reservation,
        )
        subscription = self._relay.subscribe(job.id)
        submitted = False
        try:
            # Scoped by account: one tenant's session ids cannot steer another's.
            pinned = f"{account}:{session}" if session is not None else None
            worker = await self._router.route(model, adapter, pinned)
            limits = QueueLimits(self._settings.max_queue_depth, self._settings.max_queue_wait)
            gate = admission.gate if admission is not None else None
            submitted = True
            queued = await self._queue.submit(
                job, account=account, cost=cost, worker=worker, limits=limits, gate=gate
            )
            if admission is not None:
                assert queued.gate is not None
                self._admitted(caller, admission.read(queued.gate))
            if queued.refused is not None:
                self._refuse(queued.refused)
            if key is not None:
                self._limiter.hold(key, request_id)
        except SluiceError:  # refused: the script admitted nothing, or undid it
            subscription.close()
            raise
        except BaseException:  # the script's answer was lost, if it ran: give back what it took
            subscription.close()
            release(0)
            if submitted:  # and abort the job it may have queued: its client is told it was not
                self._abort(request_id)
            raise
        return GenerationHandle(
            job,
            subscription,
            self._abort,
            self._settings.job_timeout,
            release,
            prompt,
            self._recent_wait.add,
            settled=functools.partial(self._limiter.forget, request_id),
        )

    def _refuse(self, queue: Backlog) -> NoReturn:
        """Refuse (429, 3040) rather than queue work that cannot be served in time: too many jobs,
        or too old a one, were ahead of where the account's job would go. In fair-share order
        that refuses a flooding account, not the others queueing beside it."""
        metrics.REJECTIONS.labels("queue_full").inc()
        # Little's law: the wait jobs see now is the queue over its drain rate, which is when
        # the queue will have moved on enough; before any job was seen, the oldest one's wait.
        estimate = self._recent_wait.value if self._recent_wait.value is not None else queue.oldest_wait
        raise capacity_exceeded(retry_after=min(60.0, max(1.0, estimate)))

    @staticmethod
    def _admitted(caller: Caller, admission: Admission) -> None:
        """The caller's limits decided: their quota goes out on the response; a refusal is a 429
        with when to retry."""
        caller.quota = admission.quota
        if admission.refused is not None:
            metrics.REJECTIONS.labels(f"rate_{admission.refused}").inc()
            raise rate_limited(admission.refused, admission.retry_after)

    def _release_of(self, caller: Caller, request_id: str, cost: int) -> Callable[[int], None]:
        """What gives an admitted request's reservation back, resized to the tokens it really
        used, when it ends."""
        key = caller.key
        if key is None:
            return lambda used: None

        def release(used: int) -> None:
            self._in_background(self._limiter.release(key, request_id, cost, used))

        return release
