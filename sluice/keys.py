"""API keys: each maps to an account and carries its own limits. Stored hashed, never in clear.

A key is ``sk-sluice-`` and 43 random URL-safe characters (256 bits), so a plain SHA-256 is the
right hash: there is nothing to brute-force that a slow password hash would protect. Records live
in Redis (``sluice keys create|list|revoke``) or in a JSON file the gateway loads
(``SLUICE_KEYS_FILE``, e.g. a mounted Kubernetes Secret); the gateway reads both.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import cast

import msgspec
from msgspec import Struct
from redis.asyncio import Redis

#: Redis hash: key hash -> encoded :class:`KeyRecord`.
KEYS_KEY = "sluice:keys"
PREFIX = "sk-sluice-"


class Limits(Struct, frozen=True, omit_defaults=True):
    """Per-key limits; ``None`` takes the deployment's default (``SLUICE_DEFAULT_*``)."""

    #: Requests per minute (Workers AI's own default is 300).
    rpm: int | None = None
    #: Tokens per minute: prompt tokens plus max_tokens, reserved at admission.
    tpm: int | None = None
    #: Requests in flight at once.
    concurrency: int | None = None


class KeyRecord(Struct, frozen=True, omit_defaults=True):
    id: str
    account: str
    hash: str
    name: str = ""
    created_at: float = 0.0
    limits: Limits = Limits()


_record = msgspec.json.Decoder(KeyRecord)
_records = msgspec.json.Decoder(list[KeyRecord])


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(account: str, name: str = "", limits: Limits | None = None) -> tuple[str, KeyRecord]:
    """A fresh key (shown once) and the record that stores it hashed."""
    key = PREFIX + secrets.token_urlsafe(32)
    record = KeyRecord(
        id=f"key_{secrets.token_hex(6)}",
        account=account,
        hash=hash_key(key),
        name=name,
        created_at=time.time(),
        limits=limits or Limits(),
    )
    return key, record


def load_file(path: str | Path) -> dict[str, KeyRecord]:
    """Records from a JSON list (what ``sluice keys create --file`` writes), by hash."""
    return {record.hash: record for record in _records.decode(Path(path).read_bytes())}


def append_to_file(path: str | Path, record: KeyRecord) -> None:
    target = Path(path)
    records = list(load_file(target).values()) if target.exists() else []
    target.write_bytes(msgspec.json.format(msgspec.json.encode([*records, record])) + b"\n")


class KeyStore:
    """Key records in Redis, plus those loaded from a file."""

    def __init__(self, redis: Redis, file_records: dict[str, KeyRecord] | None = None) -> None:
        self._redis = redis
        self._file = file_records or {}

    async def add(self, record: KeyRecord) -> None:
        await cast(
            Awaitable[int], self._redis.hset(KEYS_KEY, mapping={record.hash: msgspec.json.encode(record)})
        )

    async def find(self, digest: str) -> KeyRecord | None:
        """The record of the key whose :func:`hash_key` is ``digest``."""
        if digest in self._file:
            return self._file[digest]
        raw = await cast(Awaitable[bytes | None], self._redis.hget(KEYS_KEY, digest))
        return _record.decode(raw) if raw is not None else None

    async def all(self) -> list[KeyRecord]:
        stored = await cast(Awaitable[dict[bytes, bytes]], self._redis.hgetall(KEYS_KEY))
        records = [_record.decode(raw) for raw in stored.values()] + list(self._file.values())
        return sorted(records, key=lambda r: r.created_at)

    async def revoke(self, key_id: str) -> bool:
        """Remove a Redis-stored key by id; ``False`` if there is none (file keys: edit the file)."""
        for record in await self.all():
            if record.id == key_id and record.hash not in self._file:
                return bool(await cast(Awaitable[int], self._redis.hdel(KEYS_KEY, record.hash)))
        return False
