"""Workers AI response types: the v4 success envelope and the SSE frames of a stream."""

from __future__ import annotations

import msgspec

from sluice.contract import Usage


class RunResult(msgspec.Struct, omit_defaults=True):
    response: str
    usage: Usage


class RunEnvelope(msgspec.Struct):
    result: RunResult
    success: bool = True
    errors: list[object] = msgspec.field(default_factory=list)
    messages: list[object] = msgspec.field(default_factory=list)


class StreamFrame(msgspec.Struct, omit_defaults=True):
    """One ``data:`` frame. ``p`` is random-length padding, as Cloudflare sends against
    token-length side channels; ``usage`` rides on the last frame before ``[DONE]``."""

    response: str
    p: str | None = None
    usage: Usage | None = None
