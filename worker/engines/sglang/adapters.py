"""LoRA adapters on an SGLang server: registered on demand with ``/load_lora_adapter``, named in
``/generate`` by ``lora_path``, unregistered least recently used first past a cap.

SGLang itself moves registered adapters between host memory and its GPU slots
(``--max-loras-per-batch``); what the worker bounds is how many it has registered, and so the
host memory they take. An adapter a running request uses is never unregistered.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sluice.errors import bad_input
from worker import metrics
from worker.engines.base import AdapterFiles
from worker.engines.sglang.client import SGLangClient, SGLangRejected, SGLangUnavailable

log = logging.getLogger("sluice.worker.engine")


class SGLangAdapters:
    def __init__(self, client: SGLangClient, capacity: int) -> None:
        self._client = client
        self.capacity = capacity
        self._loaded: OrderedDict[str, None] = OrderedDict()
        self._loading: dict[str, asyncio.Future[None]] = {}
        self._unloading: dict[str, asyncio.Future[None]] = {}
        self._in_use: Counter[str] = Counter()
        metrics.adapters_seen("sglang")

    @property
    def names(self) -> list[str]:
        return list(self._loaded)

    @asynccontextmanager
    async def using(self, adapter: AdapterFiles) -> AsyncIterator[str]:
        """The adapter registered on the server for the duration: its name for ``lora_path``."""
        self._in_use[adapter.name] += 1
        try:
            await self._register(adapter)
            yield adapter.name
        finally:
            self._in_use[adapter.name] -= 1
            if not self._in_use[adapter.name]:
                del self._in_use[adapter.name]

    async def _register(self, adapter: AdapterFiles) -> None:
        while (unloading := self._unloading.get(adapter.name)) is not None:
            await asyncio.shield(unloading)  # registered again only once the server let it go
        if adapter.name in self._loaded:
            self._loaded.move_to_end(adapter.name)
            return
        loading = self._loading.get(adapter.name)
        if loading is None:  # one load however many requests ask for it meanwhile
            loading = asyncio.ensure_future(self._load(adapter))
            self._loading[adapter.name] = loading
            loading.add_done_callback(lambda _: self._loading.pop(adapter.name, None))
        await asyncio.shield(loading)

    async def _load(self, adapter: AdapterFiles) -> None:
        update = await self._client.load_lora_adapter(adapter.name, str(adapter.path))
        if not update.success and "already" in (update.error_message or ""):
            # Registered before this worker knew it: a sidecar server outliving a worker restart,
            # or a load whose reply was lost. Names are finetune ids: the same files.
            log.info("adapter %s was already registered on the server", adapter.name)
        elif not update.success:
            # SGLang refuses what its LoRA pool cannot hold (rank, modules) or without --enable-lora.
            reason = update.error_message
            raise bad_input(f"lora: the engine cannot load this adapter: {reason}", param="lora")
        self._loaded[adapter.name] = None
        metrics.ADAPTER_LOADS.labels("sglang").inc()
        await self._evict()
        metrics.ADAPTERS_LOADED.labels("sglang").set(len(self._loaded))

    async def _evict(self) -> None:
        spare = [name for name in self._loaded if name not in self._in_use and name not in self._loading]
        for name in spare[: max(0, len(self._loaded) - self.capacity)]:
            del self._loaded[name]
            unloading = asyncio.ensure_future(self._unload(name))
            self._unloading[name] = unloading
            await asyncio.shield(unloading)

    async def _unload(self, name: str) -> None:
        try:
            update = await self._client.unload_lora_adapter(name)
            if not update.success:
                log.warning("adapter %s not unloaded: %s", name, update.error_message)
        except (SGLangRejected, SGLangUnavailable) as exc:
            # It may stay registered on the server: a later load of it is answered "already
            # loaded", which counts as loaded (_load).
            log.warning("adapter %s not unloaded: %s", name, exc)
        finally:
            self._unloading.pop(name, None)
        metrics.ADAPTER_EVICTIONS.labels("sglang").inc()
