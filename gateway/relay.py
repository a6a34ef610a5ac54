"""Where tokens are relayed: one multiplexed XREAD per gateway process over every open job stream.

One blocking XREAD per request would need a Redis connection per open stream (redis-py's pool
stops at 100) and caps throughput near 13k tok/s; one XREAD over all streams, handing entries to
per-request queues, does not (DESIGN.md, Budgets). A stream is read from its first entry, so
nothing a worker wrote before the stream joined the read is missed.

A new job's stream is not in the read in progress, and restarting that read to take it in would
cost a round trip before its first token could arrive. Instead each process reads its own
*inbox* in every read: a job's first write is copied there (``sluice/events.py``), and its
stream joins the reads that follow, from the copy's last entry. A stream whose first write was not
copied (a worker from before inboxes, during a rolling update) is still read, within
``UNJOINED_BLOCK_MS`` (or the coalescing interval, below, while busy): no read blocks longer
while a stream has had no event, and one already blocked when such a stream is subscribed is woken
once that time has passed.

A subscriber that falls behind (its queue above ``HIGH_WATER``) is left out of the reads until its
reader takes what is queued, so a slow client holds its backlog in Redis, not in gateway memory.

Each read costs the gateway in proportion to the streams open (every key and its last id are
sent), so a read per arriving token is most of the gateway's CPU per token. While the relay is
busy (above ``coalesce_above`` events a second) it reads at most once per ``coalesce_ms``: each
read then takes many streams' tokens, and each stream's tokens since its last frame leave as one
frame. Below that rate every token is read and sent as it comes. The wait between reads is a
read of the inbox alone, so a new stream's first token goes out as it comes (time to first token
is never held back) and the wait goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from sluice.contract import (
    INBOX_MAXLEN,
    INBOX_STREAM_FIELD,
    Event,
    decode_event,
    events_key,
    inbox_key,
)
from sluice.errors import internal, queue_unavailable
from sluice.events import failed
from sluice.multiplex import Multiplexed

log = logging.getLogger("sluice.gateway.relay")

HIGH_WATER = 256
#: Upper bound on one XREAD's wait; wakes make it return earlier whenever the stream set changes.
BLOCK_MS = 5_000
#: ... and while a stream has had no event (its first write may not come through the inbox).
UNJOINED_BLOCK_MS = 100
#: Entries taken per stream per read.
COUNT = 512
#: Seconds of Redis outage after which open streams end with an error instead of waiting on.
OUTAGE_GRACE = 5.0
#: Seconds past its block an XREAD's reply may be late before the connection is taken for
#: half-open (a partition, a Redis host gone) and replaced.
LATE_REPLY = 2.0


Entries = list[tuple[bytes, list[tuple[bytes, list[bytes]]]]]


async def _xread(connection: Multiplexed, streams: dict[bytes, bytes], block_ms: int) -> Entries:
    """Entries as Redis sends them: redis-py's client would build a dict per entry, for its one
    field. An XREAD names every open stream, so it is packed by hiredis (``sluice/multiplex.py``)."""
    names, ids = list(streams), list(streams.values())
    response: Entries | None = await connection.execute(
        "XREAD", "COUNT", COUNT, "BLOCK", block_ms, "STREAMS", *names, *ids
    )
    return response or []


def _decoded(key: bytes, value: bytes) -> Event:
    """The event, or for one this gateway cannot read (written by a newer worker during a
    rolling update, say) an error that ends its stream: never a relay stopped, or a stream left
    waiting for an end it was sent."""
    try:
        return decode_event(value)
    except msgspec.DecodeError as error:  # a ValidationError too
        log.error("unreadable event in %s, its stream ends: %s", key.decode(), error)
        return failed(internal(f"an event of this job could not be read: {error}"))


class Subscription:
    """The events of one job, in order, as the relay reads them."""

    def __init__(self, relay: StreamRelay, job_id: str) -> None:
        self.key = events_key(job_id).encode()
        self.last_id: bytes = b"0-0"
        self.paused = False
        self._relay = relay
        self._queue: asyncio.Queue[Event] = asyncio.Queue()

    def deliver(self, event: Event) -> None:
        self._queue.put_nowait(event)
        if self._queue.qsize() >= HIGH_WATER:
            self.paused = True

    async def next(self) -> list[Event]:
        """The next event and every one already queued behind it."""
        events = [await self._queue.get()]
        while not self._queue.empty():
            events.append(self._queue.get_nowait())
        if self.paused:
            self.paused = False
            self._relay.wake()
        return events

    def close(self) -> None:
        self._relay.unsubscribe(self)


class StreamRelay:
    def __init__(
        self,
        redis_url: str,
        control: Redis,
        *,
        inbox: str | None = None,
        coalesce_above: int = 0,
        coalesce_ms: float = 0.0,
    ) -> None:
        """``inbox``: this process's (``sluice.contract.inbox_key`` of the gateway id its jobs
        carry); a fresh one by default."""
        # Its own connection: the relay spends most of its life blocked in XREAD.
        self._reader = Multiplexed.from_url(redis_url, timeout=BLOCK_MS / 1000 + LATE_REPLY)
        self._control = control
        self._inbox = (inbox or inbox_key(uuid.uuid4().hex)).encode()
        self._inbox_id = b"0-0"
        self._blocking = 0  # ms: how long the read in progress may block
        self._unjoined_check: asyncio.TimerHandle | None = None
        self._wake_pending = False
        self._subscriptions: dict[bytes, Subscription] = {}
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._busy_above = coalesce_above
        self._interval = coalesce_ms / 1000
        self._busy = False
        self._counted = 0  # events relayed since the rate was last measured
        self._counted_since = 0.0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sluice-relay")

    async def close(self) -> None:
        if self._unjoined_check is not None:
            self._unjoined_check.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(RedisError):
            await self._control.delete(self._inbox)
        await self._reader.aclose()

    @property
    def inbox(self) -> str:
        """This relay's inbox: where its jobs' first writes are copied; appending to it ends the
        XREAD in progress."""
        return self._inbox.decode()

    def subscribe(self, job_id: str) -> Subscription:
        """Follow ``job_id``'s events from its first: its first write comes through the inbox,
        and its stream joins the reads from there."""
        subscription = Subscription(self, job_id)
        self._subscriptions[subscription.key] = subscription
        if self._blocking > UNJOINED_BLOCK_MS and self._unjoined_check is None:
            delay = UNJOINED_BLOCK_MS / 1000
            self._unjoined_check = asyncio.get_running_loop().call_later(delay, self._check_unjoined)
        return subscription

    def _check_unjoined(self) -> None:
        """The long read that was blocked when streams were subscribed still is: if one of them
        has had no event yet, wake it (its first write may not have come through the inbox)."""
        self._unjoined_check = None
        unjoined = any(subscription.last_id == b"0-0" for subscription in self._subscriptions.values())
        if unjoined and self._blocking > UNJOINED_BLOCK_MS:
            self.wake()

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.pop(subscription.key, None)

    def wake(self) -> None:
        """Make the XREAD in progress return so the next one sees the changed stream set."""
        if self._wake_pending:
            return  # one wake per read is enough
        self._wake_pending = True
        task = asyncio.create_task(self._send_wake())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _send_wake(self) -> None:
        try:
            async with self._control.pipeline(transaction=False) as pipe:
                pipe.xadd(self._inbox, {b"w": b"1"}, maxlen=INBOX_MAXLEN, approximate=True)
                pipe.expire(self._inbox, 3600)
                await pipe.execute()
        except RedisError as exc:
            log.warning("relay wake failed: %s", exc)

    def _count(self, events: int) -> None:
        """The relayed rate, measured over windows of a tenth of a second (longer when idle)."""
        self._counted += events
        now = asyncio.get_running_loop().time()
        if now - self._counted_since >= 0.1:
            rate = self._counted / (now - self._counted_since)
            self._busy = self._busy_above > 0 and rate > self._busy_above
            self._counted, self._counted_since = 0, now

    def _streams(self) -> dict[bytes, bytes]:
        """What a read takes: the inbox and every stream not paused; sets how long it may block."""
        streams = {self._inbox: self._inbox_id}
        self._blocking = BLOCK_MS
        for key, subscription in self._subscriptions.items():
            if not subscription.paused:
                streams[key] = subscription.last_id
                if subscription.last_id == b"0-0":
                    self._blocking = UNJOINED_BLOCK_MS
        return streams

    def _fail_all(self) -> None:
        """Redis has been away too long: end every open stream with a retryable error."""
        event = failed(queue_unavailable())
        subscriptions, self._subscriptions = self._subscriptions, {}
        for subscription in subscriptions.values():
            subscription.deliver(event)

    async def _run(self) -> None:
        failing_since: float | None = None
        while True:
            # Reset before taking the stream set: a subscriber resuming from here on wakes the read.
            self._wake_pending = False
            try:
                streams = self._streams()
                try:
                    response = await _xread(self._reader, streams, self._blocking)
                finally:
                    self._blocking = 0
                self._count(self._deliver(response))
                if self._busy:
                    await self._hold()
            except (RedisError, OSError) as exc:
                now = asyncio.get_running_loop().time()
                failing_since = failing_since or now
                log.warning("relay read failed, retrying: %s", exc)
                if now - failing_since >= OUTAGE_GRACE and self._subscriptions:
                    self._fail_all()
                await asyncio.sleep(0.5)
                continue
            except Exception:  # a bug: every stream of this process hangs if the relay stops
                log.exception("relay read failed unexpectedly, reading on")
                await asyncio.sleep(0.5)
                continue
            failing_since = None

    async def _hold(self) -> None:
        """Let the next read gather more tokens, for the interval. The wait is itself a read, of
        the inbox: a new stream's first token is delivered at once, so coalescing never holds
        back a time to first token, and the wait goes on for what is left of the interval."""
        loop = asyncio.get_running_loop()
        until = loop.time() + self._interval
        while (left := until - loop.time()) > 0.0005:
            inbox = {self._inbox: self._inbox_id}
            response = await _xread(self._reader, inbox, max(1, round(left * 1000)))
            self._count(self._deliver(response))

    def _deliver(self, response: Entries) -> int:
        """Hand a read's entries to their subscriptions; how many there were. The inbox first: a
        stream read from its start in the same reply then skips what its copy delivered."""
        relayed = 0
        joined: dict[bytes, bytes] = {}  # stream -> the last entry its copy delivered
        for key, entries in response:
            if key == self._inbox:
                relayed += self._from_inbox(entries, joined)
        for key, entries in response:
            subscription = self._subscriptions.get(key)
            if subscription is None:
                continue
            if (copied := joined.get(key)) is not None:
                ids = [entry_id for entry_id, _ in entries]
                entries = entries[ids.index(copied) + 1 :] if copied in ids else entries
            for entry_id, (_field, value) in entries:  # one field per entry, EVENT_FIELD
                subscription.last_id = entry_id
                subscription.deliver(_decoded(key, value))
            relayed += len(entries)
        return relayed

    def _from_inbox(self, entries: list[tuple[bytes, list[bytes]]], joined: dict[bytes, bytes]) -> int:
        """Deliver the first writes copied to the inbox, to streams that have had no event yet
        (those that have were read from their stream, in this reply or before it)."""
        relayed = 0
        self._inbox_id = entries[-1][0]
        for _entry_id, fields in entries:
            if len(fields) < 4 or fields[0] != INBOX_STREAM_FIELD:
                continue  # a wake-up
            key, last = fields[1], fields[3]
            subscription = self._subscriptions.get(key)
            if subscription is None or subscription.last_id != b"0-0":
                continue
            for value in fields[5::2]:
                subscription.deliver(_decoded(key, value))
            subscription.last_id = joined[key] = last
            relayed += len(fields) // 2 - 2
        return relayed
