"""Prompt tokens counted at the gateway, before anything is queued.

The count uses the served model's own tokenizer, which its workers publish in Redis, so the
gateway needs no model files. It counts the texts the client sent, not the chat template around
them: a slight underestimate, so the gateway never refuses what fits; the worker checks the
exact templated prompt again.
"""

from __future__ import annotations

import asyncio
import logging
import time

from redis.asyncio import Redis
from tokenizers import Tokenizer

from sluice.contract import GenerationInput, tokenizer_key

log = logging.getLogger("sluice.gateway.tokens")

#: Texts longer than this are tokenized off the event loop.
_INLINE_CHARS = 4096
#: Seconds before asking Redis again for a tokenizer no worker has published yet.
_RETRY = 5.0


def texts_of(request: GenerationInput) -> list[str]:
    if request.prompt is not None:
        return [request.prompt]
    return [message.text() for message in request.messages or []]


def upper_estimate(request: GenerationInput) -> int:
    """Prompt tokens without the tokenizer: about three characters a token, an overestimate for
    English, so a reservation made on it is not too small."""
    return sum(map(len, texts_of(request))) // 3 + 1


class PromptCounter:
    def __init__(self, redis: Redis, redis_timeout: float) -> None:
        self._redis = redis
        self._redis_timeout = redis_timeout
        self._tokenizers: dict[str, Tokenizer] = {}
        self._parsing: dict[str, asyncio.Task[Tokenizer]] = {}
        self._missing_since: dict[str, float] = {}

    async def _tokenizer(self, model: str) -> Tokenizer | None:
        if model in self._tokenizers:
            return self._tokenizers[model]
        if model not in self._parsing:
            if time.monotonic() - self._missing_since.get(model, -_RETRY) < _RETRY:
                return None
            async with asyncio.timeout(self._redis_timeout):  # Redis is bounded; parsing is not
                raw: bytes | None = await self._redis.get(tokenizer_key(model))
            if raw is None:
                self._missing_since[model] = time.monotonic()
                return None
            if model not in self._parsing:  # a large tokenizer.json takes seconds: parsed once
                parse = asyncio.to_thread(Tokenizer.from_str, raw.decode())
                self._parsing[model] = asyncio.create_task(parse)
        parsing = self._parsing[model]
        try:
            tokenizer = await asyncio.shield(parsing)
        except Exception:  # not a tokenizer after all: count without it, try again later
            log.exception("the tokenizer published for %s does not load", model)
            if self._parsing.get(model) is parsing:
                del self._parsing[model]
                self._missing_since[model] = time.monotonic()
            return None
        self._tokenizers[model] = tokenizer
        return tokenizer

    async def count(self, model: str, request: GenerationInput) -> int | None:
        """Prompt tokens of ``request``, or ``None`` while the model's tokenizer is unknown."""
        tokenizer = await self._tokenizer(model)
        if tokenizer is None:
            return None
        texts = texts_of(request)

        def encode() -> int:
            return sum(len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False))

        if sum(map(len, texts)) > _INLINE_CHARS:
            return await asyncio.to_thread(encode)
        return encode()
