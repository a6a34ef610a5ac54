"""``sluice keys create|list|revoke``: API keys in Redis (or a keys file), from a shell."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table

from sluice.config import Settings
from sluice.keys import KeyRecord, KeyStore, Limits, append_to_file, load_file, new_key

T = TypeVar("T")


def _on_store(settings: Settings, work: Callable[[KeyStore], Awaitable[T]]) -> T:
    """Run ``work`` on the key store, its Redis connection closed after."""
    if not settings.redis_url:
        raise SystemExit("sluice keys: set REDIS_URL or --redis-url (or use --file)")
    url = settings.redis_url
    file_records = load_file(settings.keys_file) if settings.keys_file else None

    async def run() -> T:
        redis = Redis.from_url(url)
        try:
            return await work(KeyStore(redis, file_records))
        finally:
            await redis.aclose()

    return asyncio.run(run())


def count_keys(settings: Settings) -> int:
    """How many keys a gateway with these settings would accept (0 when Redis is not set yet)."""
    in_file = len(load_file(settings.keys_file)) if settings.keys_file else 0
    if not settings.redis_url:
        return in_file
    return len(_on_store(settings, KeyStore.all))


def _table(records: list[KeyRecord]) -> Table:
    table = Table()
    for column in ("id", "account", "name", "rpm", "tpm", "concurrency", "hash"):
        # Ids and accounts are copied into commands: never cut, whatever the terminal's width.
        table.add_column(column, no_wrap=column in ("id", "account"), overflow="fold")
    for r in records:
        limits = [
            str(v) if v is not None else "default" for v in (r.limits.rpm, r.limits.tpm, r.limits.concurrency)
        ]
        table.add_row(r.id, r.account, r.name, *limits, r.hash[:8])
    return table


def run_keys(settings: Settings, args: argparse.Namespace) -> int:
    console = Console()
    file = getattr(args, "key_file", None)
    if args.keys_command == "create":
        limits = Limits(rpm=args.key_rpm, tpm=args.key_tpm, concurrency=args.key_concurrency)
        key, record = new_key(args.key_account, args.key_name, limits)
        if file:
            append_to_file(file, record)
        else:
            _on_store(settings, lambda store: store.add(record))
        where = file or "Redis"
        console.print(f"created {record.id} for account {record.account!r} in {where}; the key, shown once:")
        print(key)
        return 0
    if args.keys_command == "list":
        records = list(load_file(file).values()) if file else _on_store(settings, KeyStore.all)
        console.print(_table(records))
        return 0
    if not _on_store(settings, lambda store: store.revoke(args.key_id)):
        console.print(f"no key {args.key_id} in Redis (keys in a file are revoked by editing the file)")
        return 1
    console.print(f"revoked {args.key_id}; gateways stop accepting it within seconds")
    return 0
