"""``sluice lora add|list|rm``: LoRA adapters (finetunes), from a shell, validated as uploads are."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table

from sluice.adapters import CONFIG_FILE, WEIGHTS_FILE, AdapterStore, Finetune
from sluice.config import Settings
from sluice.errors import SluiceError

T = TypeVar("T")


def _on_store(settings: Settings, work: Callable[[AdapterStore], Awaitable[T]]) -> T:
    """Run ``work`` on the adapter store, its Redis connection closed after."""
    if not settings.redis_url:
        raise SystemExit("sluice lora: set REDIS_URL or --redis-url")
    url = settings.redis_url

    async def run() -> T:
        redis = Redis.from_url(url)
        try:
            return await work(AdapterStore.of(redis, settings))
        finally:
            await redis.aclose()

    return asyncio.run(run())


async def _add(store: AdapterStore, args: argparse.Namespace) -> Finetune:
    """Register, then upload both files; anything refused takes the whole finetune away again."""
    model = args.lora_model or next(iter(store.base_models))
    finetune = await store.create(args.lora_account, model, args.lora_name, args.lora_description)
    try:
        for file_name, path in ((CONFIG_FILE, args.lora_config), (WEIGHTS_FILE, args.lora_weights)):
            with await asyncio.to_thread(Path(path).open, "rb") as source:
                finetune = await store.add_file(finetune.account, finetune.id, file_name, source)
    except BaseException:
        await store.delete(finetune.account, finetune.id)
        raise
    return finetune


def _table(finetunes: list[Finetune], store: AdapterStore) -> Table:
    table = Table(caption=f"files under {store.directory}/<account>/<id>/")
    for column in ("id", "name", "model", "ready", "created"):
        # Ids and names are copied into commands: never cut, whatever the terminal's width.
        table.add_column(column, no_wrap=column in ("id", "name"), overflow="fold")
    for f in finetunes:
        ready = "yes" if f.ready else "no: missing " + ", ".join(f.missing)
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(f.created_at))
        table.add_row(f.id, f.name, f.model, ready, created)
    return table


def run_lora(settings: Settings, args: argparse.Namespace) -> int:
    console = Console()
    try:
        if args.lora_command == "add":
            for path in (args.lora_config, args.lora_weights):
                if not Path(path).is_file():
                    console.print(f"sluice lora add: no file {path}")
                    return 1
            added = _on_store(settings, lambda store: _add(store, args))
            console.print(f"added {added.name!r} ({added.id}) to account {added.account!r}, ready")
            return 0
        if args.lora_command == "list":

            async def listing(store: AdapterStore) -> Table:
                return _table(await store.list(args.lora_account), store)

            console.print(_on_store(settings, listing))
            return 0
        removed = _on_store(settings, lambda store: store.delete(args.lora_account, args.lora_ref))
        console.print(f"removed {removed.name!r} ({removed.id}) and its files")
        return 0
    except SluiceError as error:
        # Plain print: rich would wrap the message at the terminal's width.
        print(f"sluice lora {args.lora_command}: {error.message}", file=sys.stderr)
        return 1


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: Callable[[argparse.ArgumentParser], None],
) -> None:
    lora = commands.add_parser("lora", help="LoRA adapters (finetunes): add, list, rm")
    common(lora)
    lora_commands = lora.add_subparsers(dest="lora_command", required=True)
    add = lora_commands.add_parser("add", help="register an adapter and upload its two files")
    add.add_argument("--account", dest="lora_account", required=True, help="the account it belongs to")
    add.add_argument("--name", dest="lora_name", required=True, help="its name, unique in the account")
    add.add_argument("--config", dest="lora_config", required=True, help=f"the {CONFIG_FILE}")
    add.add_argument("--weights", dest="lora_weights", required=True, help=f"the {WEIGHTS_FILE}")
    add.add_argument("--model", dest="lora_model", help="the served base model (default: the first)")
    add.add_argument("--description", dest="lora_description", default="", help="a note for people")
    listing = lora_commands.add_parser("list", help="an account's adapters and whether each is ready")
    listing.add_argument("--account", dest="lora_account", required=True)
    remove = lora_commands.add_parser("rm", help="delete an adapter and its files")
    remove.add_argument("--account", dest="lora_account", required=True)
    remove.add_argument("lora_ref", help="its id or name")
