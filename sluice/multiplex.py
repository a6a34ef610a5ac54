"""One Redis connection for all of a process's concurrent callers, for the commands on the request
path: the enqueue, the claim, the event appends and the relay's read.

redis-py's client spends more CPU on each command than the round trip itself costs: it takes a
connection from its pool, checks it (a read on the socket), packs the command in Python argument
by argument, runs it under its retry helper and hands the connection back. About 200 µs of CPU
per script call on the build VM, against 90 µs here. Here a command is packed by hiredis and
written at once; Redis answers a connection's commands in the order they came, so one reader
hands the replies back in that order, each to the caller whose command it answers.

Retries stay with the callers (``sluice/retry.py``), and so do timeouts, but where the
callers set none: there the connection has its own (``timeout``). A caller that gives up (cancelled)
leaves its reply to be read and dropped, so the connection stays in step: redis-py's client must
instead drop a connection whose reply was not read. A lost connection fails every command
waiting on it with redis-py's ``ConnectionError``, which callers already handle, and the next
command connects again.

Connections are made by redis-py (the URL's host or socket, TLS, password, database), and
replies parsed by its parser: only the per-command path is this module's.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import hiredis
from redis.asyncio import ConnectionPool
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("sluice.multiplex")

Argument = str | bytes | int | float


class _Line:
    """One connection, the commands waiting on it for replies, and its reader."""

    def __init__(self, connection: AbstractConnection) -> None:
        self.connection = connection
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.open = True
        #: Since when nothing has come back while commands wait (the last reply, or the first
        #: command sent after a quiet spell).
        self.quiet_since = 0.0
        self.reader = asyncio.create_task(self._read(), name="sluice-multiplexed")

    def drop(self, why: str) -> None:
        """No more commands here; those waiting fail, and the connection closes."""
        self.open = False
        log.warning("Redis connection dropped: %s", why)
        self.reader.cancel()

    async def _read(self) -> None:
        """Hand each reply to the oldest waiting command, for the connection's life."""
        try:
            while True:
                try:
                    reply: Any = await self.connection.read_response()
                except ResponseError as error:  # an error reply: read whole, the next is in step
                    reply = error
                if not self.waiting:
                    raise ConnectionError("Redis sent a reply no command was waiting for")
                waiter = self.waiting.popleft()
                self.quiet_since = asyncio.get_running_loop().time()
                if waiter.done():  # its caller gave up
                    continue
                if isinstance(reply, ResponseError):
                    waiter.set_exception(reply)
                else:
                    waiter.set_result(reply)
        except Exception as error:  # lost, or out of step: nothing more read here can be trusted
            self._fail(error)
        except asyncio.CancelledError:
            self._fail(ConnectionError("connection closed"))
            raise
        finally:
            with contextlib.suppress(Exception):
                await self.connection.disconnect()

    def _fail(self, error: Exception) -> None:
        self.open = False
        if self.waiting:
            log.warning("Redis connection lost with %d commands waiting: %s", len(self.waiting), error)
        for waiter in self.waiting:
            if not waiter.done():
                waiter.set_exception(ConnectionError(str(error)))
        self.waiting.clear()


class Multiplexed:
    """Commands on one connection, made like ``pool``'s, written as they are asked and answered in
    order. A blocking command (``XREAD BLOCK``) holds up every command behind it: give it a
    connection of its own."""

    def __init__(
        self, pool: ConnectionPool, *, stalled_after: float = 1.0, timeout: float | None = None
    ) -> None:
        """``stalled_after``: a caller that gives up when nothing has come back for this many
        seconds while commands wait drops the connection, for the next command to open another.
        A half-open connection (a network partition, a Redis host gone) would otherwise hold
        every later command until its caller's timeout, for ever; redis-py's client drops a
        connection whenever a command on it is abandoned, which a shared one cannot afford.

        ``timeout``: how long a caller waits for its reply before it gets redis-py's
        ``TimeoutError`` (and so gives up, as above). For connections whose callers set no
        timeout of their own: without one, a half-open connection would hold them for ever."""
        # No socket timeout: a reply waited for is one its caller still wants, or one to drop.
        kwargs = {**pool.connection_kwargs, "socket_timeout": None}
        self._new = functools.partial(pool.connection_class, **kwargs)
        self._line: _Line | None = None
        self._connecting = asyncio.Lock()
        # A caller timed out has waited in silence for all of ``timeout``, however short.
        self._stalled_after = stalled_after if timeout is None else min(stalled_after, timeout)
        self._timeout = timeout

    @classmethod
    def from_url(cls, url: str, *, stalled_after: float = 1.0, timeout: float | None = None) -> Multiplexed:
        return cls(ConnectionPool.from_url(url), stalled_after=stalled_after, timeout=timeout)

    async def execute(self, *command: Argument) -> Any:
        """The reply to ``command``, as redis-py's parser gives it (no response callbacks);
        raises an error reply as redis-py does."""
        # Packed before it joins the queue: one that cannot be packed must leave no reply awaited.
        packed = hiredis.pack_command(command)  # type: ignore[arg-type]  # its stub says one argument
        line = self._line
        if line is None or not line.open or not line.connection.is_connected:
            line = await self._connect()
        loop = asyncio.get_running_loop()
        reply = loop.create_future()
        if not line.waiting:
            line.quiet_since = loop.time()
        line.waiting.append(reply)  # before the write: the replies come back in this order
        try:
            # Written before its first await (connected, checked above): commands go out in the
            # order of ``waiting``.
            await line.connection.send_packed_command(packed, check_health=False)
        except BaseException:
            reply.cancel()
            # redis-py disconnects a connection whose write failed or was cut short (its caller
            # cancelled while the write waited for room): what waits there fails with it.
            if line.open:
                line.drop("a write failed")
            raise
        try:
            if self._timeout is None:
                return await reply
            async with asyncio.timeout(self._timeout):
                return await reply
        except (asyncio.CancelledError, TimeoutError) as gave_up:
            quiet = loop.time() - line.quiet_since
            if line.open and line.waiting and quiet >= self._stalled_after:
                line.drop(f"no reply for {quiet:.1f} s while {len(line.waiting)} commands waited")
            if isinstance(gave_up, TimeoutError):
                raise RedisTimeoutError(f"no reply from Redis in {self._timeout} s") from None
            raise

    def register_script(self, source: str) -> Script:
        """As redis-py's ``Redis.register_script``: the script, run on this connection."""
        return Script(self, source)

    async def _connect(self) -> _Line:
        async with self._connecting:  # concurrent first callers share one connection
            line = self._line
            if line is None or not line.open or not line.connection.is_connected:
                if line is not None and line.open:  # disconnected under its reader, still reading
                    line.drop("disconnected")
                connection = self._new()
                await connection.connect()  # type: ignore[no-untyped-call]
                line = self._line = _Line(connection)
            return line

    async def aclose(self) -> None:
        line, self._line = self._line, None
        if line is not None:
            line.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await line.reader


class Script:
    """A Lua script run by its SHA1 (``EVALSHA``), sent whole (``EVAL``, which also caches it)
    when Redis no longer has it: after a restart, or the first time."""

    def __init__(self, connection: Multiplexed, source: str) -> None:
        self._connection = connection
        self._source = source
        self._sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys: Sequence[Argument] = (), args: Sequence[Argument] = ()) -> Any:
        try:
            return await self._connection.execute("EVALSHA", self._sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self._connection.execute("EVAL", self._source, len(keys), *keys, *args)
