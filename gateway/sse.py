"""Server-sent events framing shared by both APIs."""

from __future__ import annotations

import msgspec

_encoder = msgspec.json.Encoder()

DONE = b"data: [DONE]\n\n"
HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def frame(payload: object) -> bytes:
    return b"data: " + _encoder.encode(payload) + b"\n\n"
