"""The small interface every engine implements, and the handle of one running generation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from sluice.config import ServedModel
from sluice.contract import Delta, Done, GenerationInput
from sluice.errors import SluiceError

Output = Delta | Done | SluiceError


class Generation:
    """One request in flight on an engine.

    The engine puts :class:`Delta` outputs on :attr:`outputs`, then exactly one :class:`Done` or
    :class:`SluiceError`. :meth:`cancel` asks the engine to stop generating for it.
    """

    def __init__(self, cancel: Callable[[], None]) -> None:
        self.outputs: asyncio.Queue[Output] = asyncio.Queue()
        self._cancel = cancel

    def cancel(self) -> None:
        self._cancel()

    async def next_batch(self) -> list[Output]:
        """Wait for one output, then take every output already waiting: the coalescing point."""
        batch = [await self.outputs.get()]
        while not self.outputs.empty():
            batch.append(self.outputs.get_nowait())
        return batch


class Engine(Protocol):
    """Runs one served model. ``start`` loads it; ``submit`` starts a generation at once."""

    name: str
    served: ServedModel

    async def start(self) -> None: ...

    def submit(self, request_id: str, request: GenerationInput) -> Generation: ...

    async def close(self) -> None: ...
