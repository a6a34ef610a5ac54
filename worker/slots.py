"""One worker, two arq queues, one budget of slots, polled when woken.

A worker takes jobs from its model's shared queue and from its own direct queue (jobs the gateway
routed to it: their adapter is loaded here, or their session is pinned here). arq runs one queue
per ``Worker``, so there are two; each may start a job only while both together run fewer than
the worker's slots. ``max_jobs`` is computed from both counts when read, and each poll counts the
free slots as taken across its claim's round trip, so the two together never overshoot.

Both poll when the worker's :class:`~worker.doorbell.Doorbell` rings (a job queued or aborted, a
slot freed), and otherwise only every ``poll_delay`` seconds. A poll claims jobs in one script
(``sluice/fairqueue.py``) that also reads them as arq would before running them and records them
in the worker's running set, so a claimed job starts at once: arq's ``run_job`` would spend a
round trip reading it again, and the worker one more recording it. A job's end, arq's and the
record's, is written by the job itself with its last events (``JOB_END`` in its context), or else
is one script of its own (``Claims.finish``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from arq import Worker
from arq.jobs import SerializationError, deserialize_job_raw
from arq.worker import Function

from sluice.contract import pickup_channel
from sluice.fairqueue import Claimed, Claims
from sluice.retry import ride_out
from worker.doorbell import Doorbell

log = logging.getLogger("sluice.worker")

#: In a job's context: its end (``Claims.end_of``), for the job to write with its last events
#: (``EventPublisher.publish``); a job that did returns ``True``, and is not ended again.
JOB_END = "sluice_job_end"


class Slots:
    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.workers: list[Worker] = []

    @property
    def running(self) -> int:
        return sum(worker.job_counter for worker in self.workers)


class SlottedWorker(Worker):
    """An arq ``Worker`` whose ``max_jobs`` is what its :class:`Slots` leave it, which polls
    its queue when ``bell`` rings, takes and ends its jobs through ``claims`` (which records them
    in its worker's running set, shared by its queues), and calls ``out_of_tries`` with a job it
    will not start again (its tries used) and how many it had."""

    def __init__(
        self,
        *args: Any,
        slots: Slots,
        bell: Doorbell,
        claims: Claims,
        out_of_tries: Callable[[str, int], Awaitable[None]],
        **kwargs: Any,
    ) -> None:
        self._slots = slots
        self._bell = bell
        self._out_of_tries = out_of_tries
        super().__init__(*args, **kwargs)
        self._wake = bell.wake_for(pickup_channel(self.queue_name))
        self._claims = claims
        #: Slots held for a claim whose reply was lost: it may have taken that many jobs, and
        #: asked again it answers with them (Claims.take); the other queue may not fill them.
        self._unanswered = 0
        slots.workers.append(self)

    @property
    def max_jobs(self) -> int:
        return self._slots.slots - (self._slots.running - self.job_counter)

    @max_jobs.setter
    def max_jobs(self, value: int) -> None:
        """arq's ``__init__`` sets it; the budget is :class:`Slots`' instead."""

    async def _poll_iteration(self) -> None:
        """arq's poll, with its claim of each job (four round trips) replaced by one script for
        all (``sluice/fairqueue.py``). The free slots are counted as taken before the claim's
        round trip, so the other queue's ``Worker`` cannot take them meanwhile, and stay so until
        the claim is answered: one whose reply was lost is asked again by the next poll."""
        wake = self._wake
        free = self._unanswered or self.max_jobs - self.job_counter
        if self.allow_pick_jobs and (self._unanswered or (wake.jobs and free > 0)):
            wake.jobs = False  # before the round trip: a job announced during it sets it again
            if not self._unanswered:
                self.job_counter += free
            self._unanswered = free
            taken = await self._claims.take(self.queue_name, free, int(self.in_progress_timeout_s * 1000))
            self._unanswered = 0
            self.job_counter -= free
            for job in taken:
                self._start(job)
            if len(taken) == free:
                wake.jobs = True  # more may wait, for the next free slot
            else:  # slots held for the claim are free again: the other queue's loop may want them
                self._bell.slot_freed()
        if self.allow_abort_jobs and wake.aborts:
            wake.aborts = False
            await self._cancel_aborted_jobs()
        for job_id, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[job_id]
                task.result()  # as arq does: a job's own failure is handled inside _run
        await self.heart_beat()

    def _start(self, job: Claimed) -> None:
        """arq's own bookkeeping for a job it claimed (``Worker.start_jobs``, after its claim)."""
        self.job_counter += 1
        task = asyncio.create_task(self._run(job))
        task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
        self.tasks[job.id] = task

    async def _run(self, job: Claimed) -> None:
        """The claimed job to its end, under arq's rules, where arq's ``run_job`` would first read
        the job in a round trip of its own (the claim read it). A job that expired, was aborted
        while it waited or has used its tries is ended unrun; one that ends, fails, times out or
        is aborted while running is ended; one cancelled by this worker stopping stays queued, to
        run again with its try counted."""
        call = self._call(job)
        if call is None:
            await asyncio.shield(self._finish(job.id, over=True))
            if self._tries_used(job):
                await self._out_of_tries(job.id, self.max_tries)  # its client told now, not at its deadline
            return
        function, args = call
        # All that generate() reads of arq's job context, and the end it writes with its last events.
        ctx = {**self.ctx, "job_try": job.attempt, JOB_END: self._claims.end_of(self.queue_name, job.id)}
        # This task is the job's (arq cancels it to abort the job): a task of its own for the
        # function cost a turn of the loop before the job started, and one after it ended.
        task = asyncio.current_task()
        assert task is not None
        self.job_tasks[job.id] = task
        over = True  # else handed back: queued again, unmarked
        ended = False  # by the job itself, in the write of its last events
        timeout = self.job_timeout_s if function.timeout_s is None else function.timeout_s
        try:
            async with asyncio.timeout(timeout):
                ended = await function.coroutine(ctx, *args) is True
            self.jobs_complete += 1
        except asyncio.CancelledError:
            if job.id in self.aborting_tasks:  # its abort (arq's _cancel_aborted_jobs)
                self.aborting_tasks.remove(job.id)
                self.jobs_failed += 1
            else:  # this worker is stopping: handed back
                over = False
                self.jobs_retried += 1
        except Exception:
            log.exception("job %s failed", job.id)
            self.jobs_failed += 1
        finally:
            del self.job_tasks[job.id]
        if not ended:
            await asyncio.shield(self._finish(job.id, over=over))

    async def _finish(self, job_id: str, *, over: bool) -> None:
        """The job's end, ridden out over a Redis blip as its events are: one not written leaves
        the job recorded as running here, recovered as this worker leaves (or, if it dies, as a
        dead worker's jobs are)."""

        await ride_out(
            lambda: self._claims.finish(self.queue_name, job_id, over=over), f"job {job_id}'s end", log
        )

    def _tries_used(self, job: Claimed) -> bool:
        """A job waiting to run (not aborted, not expired) that has used its tries."""
        return job.data is not None and not job.aborted and job.attempt > self.max_tries

    def _call(self, job: Claimed) -> tuple[Function, tuple[Any, ...]] | None:
        """The function and arguments to run, or ``None`` (said why) for a job not to be run."""
        if job.aborted:  # its client left while it waited
            log.info("job %s not run: aborted", job.id)
            return None
        if job.data is None or self._tries_used(job):
            why = "it expired" if job.data is None else f"{self.max_tries} tries used"
            log.warning("job %s not run: %s", job.id, why)
            return None
        try:
            name, args, _kwargs, _, _ = deserialize_job_raw(job.data, deserializer=self.job_deserializer)
            function = self.functions[name]
        except (SerializationError, KeyError):
            log.exception("job %s not run: not a job this worker runs", job.id)
            return None
        assert isinstance(function, Function)  # no cron jobs here
        return function, args

    async def main(self) -> None:
        """arq's loop (the pool is given, there is no start-up hook), waiting on the bell instead
        of a fixed short sleep."""
        self.ctx["redis"] = self.pool
        while True:
            self._wake.event.clear()  # before polling: a ring during the poll means poll again
            await self._poll_iteration()
            try:
                # A timeout scope, not wait_for: wait_for runs the wait as a task of its own, one
                # more turn of the loop between a ring and the claim.
                async with asyncio.timeout(self.poll_delay_s):
                    await self._wake.event.wait()
            except TimeoutError:
                self._wake.everything()

    def _release_sem_dec_counter_on_complete(self) -> None:
        """arq's, less its semaphore (only its own claim loop, replaced here, waits on it)."""
        self.job_counter -= 1
        self._bell.slot_freed()  # for this queue or the other
