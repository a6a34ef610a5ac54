"""Request ids: UUIDv7 (RFC 9562), time-ordered, so an id tells when its request arrived.

A request's id is also its job's id. The queue orders jobs by fair-share tag, not arrival
(``sluice/fairqueue.py``), so how long a waiting job has waited is read off its id instead.
Python 3.14's ``uuid.uuid7`` makes :func:`new_id` one line; until then it is written out here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

_VERSION = 0x7
_VARIANT = 0b10


def new_id(now: float | None = None) -> str:
    """A fresh UUIDv7 as 32 hex digits: 48 bits of Unix milliseconds, then 74 random bits."""
    ms = int((time.time() if now is None else now) * 1000) & (1 << 48) - 1
    rand = int.from_bytes(os.urandom(10))
    value = ms << 80 | _VERSION << 76 | (rand >> 68 & 0xFFF) << 64 | _VARIANT << 62 | rand & (1 << 62) - 1
    return f"{value:032x}"


def issued_at(request_id: str) -> float | None:
    """When :func:`new_id` made ``request_id`` (seconds since the epoch); ``None`` for any other id."""
    if len(request_id) != 32 or request_id[12] != "7":
        return None
    try:
        return int(request_id[:12], 16) / 1000
    except ValueError:
        return None


def earliest(job_ids: Iterable[bytes]) -> float | None:
    """When the earliest of these requests arrived (ids that tell none are skipped)."""
    return min((t for t in (issued_at(job_id.decode()) for job_id in job_ids) if t is not None), default=None)
